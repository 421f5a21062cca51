//! `shoal`: one binary, every role of the cluster (see `shoal --help`).

mod agent_cmd;
mod balancer_cmd;
mod cli;
mod client_cmds;
mod demo_cmd;
mod log_limit;
mod logging;
mod multicall;
mod render_cmd;
mod server_cmd;
mod webapp_cmd;

use clap::Parser;

use crate::cli::Command;

fn main() -> std::process::ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let program = args.first().map(std::path::Path::new).and_then(std::path::Path::file_name);
    let mut cli = if program.is_some_and(|p| p == "serf") {
        match serf_cli(&args[1..]) {
            Ok(cli) => cli,
            Err(code) => return code,
        }
    } else if program.is_some_and(|p| p == "init") {
        // s6-overlay's `/init [CMD ARGS…]`: `shoal init`, CMD its main command.
        let mut argv: Vec<std::ffi::OsString> = vec!["shoal".into(), "init".into()];
        if args.len() > 1 {
            argv.push("--".into());
            argv.extend(args[1..].iter().cloned());
        }
        cli::Cli::parse_from(argv)
    } else if let Some(tool) = args.first().and_then(multicall::Tool::from_program) {
        return tool.run(&args[1..]);
    } else {
        cli::Cli::parse_from(args)
    };
    if let Command::Serf(serf) = &cli.command {
        cli = match serf_cli(&serf.args) {
            Ok(cli) => cli,
            Err(code) => return code,
        };
    }
    // The stand-in tools run as the originals do: no runtime, no logging of Shoal's own.
    if let Some((tool, args)) = cli.command.tool() {
        return tool.run(args);
    }
    let verbosity = match cli.command {
        Command::Agent(_)
        | Command::Balancer(_)
        | Command::Webapp(_)
        | Command::Render(_)
        | Command::Init(_) => logging::Verbosity::Service,
        Command::Demo(_) => logging::Verbosity::Demo,
        _ => logging::Verbosity::Client,
    };
    let logging = logging::init(&cli.log, verbosity);
    let log_tap = logging.tap.clone();
    let threads = match &cli.command {
        // An agent's work is one gossip task, the RPC server and the event handlers: none of it
        // needs a second core, and a worker thread per core costs memory in every container.
        Command::Agent(_) => Some(1),
        Command::Balancer(b) => Some(b.threads.unwrap_or_else(cli::default_balancer_threads)),
        _ => None,
    };
    let runtime = match threads {
        Some(1) => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        Some(n) => tokio::runtime::Builder::new_multi_thread().worker_threads(n).enable_all().build(),
        None => tokio::runtime::Builder::new_multi_thread().enable_all().build(),
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("shoal: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let level = cli.log.log_level.clone().unwrap_or_else(|| "info".into());
    let log_json = cli.log.log_json;
    let log_limit = logging.limit.clone();
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Agent(args) => agent_cmd::run(*args, log_tap).await,
            Command::Balancer(args) => balancer_cmd::run(*args, log_tap, log_json).await,
            Command::Server(a) => server_cmd::run(a).await,
            Command::Render(a) => render_cmd::run(a).await,
            Command::Init(a) => init_cmd(a, log_limit).await,
            Command::Webapp(args) => webapp_cmd::run(args).await,
            Command::Demo(args) => demo_cmd::run(args).await,
            Command::Members(a) => client_cmds::members(a).await,
            Command::Join(a) => client_cmds::join(a).await,
            Command::Leave(a) => client_cmds::leave(a).await,
            Command::ForceLeave(a) => client_cmds::force_leave(a).await,
            Command::Event(a) => client_cmds::event(a).await,
            Command::Query(a) => client_cmds::query(a).await,
            Command::Tags(a) => client_cmds::tags(a).await,
            Command::Monitor(a) => client_cmds::monitor(a, &level).await,
            Command::Keys(a) => client_cmds::keys(a).await,
            Command::Keygen => client_cmds::keygen(),
            Command::Info(a) => client_cmds::info(a).await,
            Command::Reachability(a) => client_cmds::reachability(a).await,
            Command::Rtt(a) => client_cmds::rtt(a).await,
            Command::Handlebars(_)
            | Command::WithContenv(_)
            | Command::S6Svc(_)
            | Command::S6Svscanctl(_)
            | Command::S6Svstat(_)
            | Command::Serf(_) => Ok(()), // run above, before the runtime
        }
    });
    logging.limit.report_suppressed();
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shoal: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `serf ARGS…` as the `shoal` command line that does the same, or the exit of a command
/// answered at once (`version`, a bad flag).
fn serf_cli(args: &[std::ffi::OsString]) -> Result<cli::Cli, std::process::ExitCode> {
    match multicall::serf(args) {
        multicall::Serf::Shoal(argv) => Ok(cli::Cli::parse_from(argv)),
        multicall::Serf::Print(text) => {
            print!("{text}");
            Err(std::process::ExitCode::SUCCESS)
        }
        multicall::Serf::Fail(text, code) => {
            eprintln!("{}", text.trim_end());
            Err(std::process::ExitCode::from(code))
        }
    }
}

/// `shoal init`: runs until the container should stop, then exits with its code.
async fn init_cmd(a: cli::InitArgs, log_limit: log_limit::DependencyLimit) -> anyhow::Result<()> {
    let cfg = shoal_init::InitConfig {
        cont_init_dir: a.cont_init_dir,
        services_dir: a.services_dir,
        cont_finish_dir: a.cont_finish_dir,
        grace: a.grace,
        restart_delay: a.restart_delay,
        on_failure: match a.max_failures {
            0 => shoal_init::OnFailure::Restart,
            n => shoal_init::OnFailure::StopAfter(n),
        },
        main: a.main,
        scan_dirs: a.scan_dirs,
        contenv_dir: (a.contenv_dir != std::path::Path::new("none")).then_some(a.contenv_dir),
    };
    let code = shoal_init::run(cfg).await?;
    log_limit.report_suppressed();
    std::process::exit(code);
}
