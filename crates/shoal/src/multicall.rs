//! The tools of the reference stack that `shoal` stands in for when invoked under their name (a
//! symlink such as `/usr/local/bin/handlebars -> shoal`) or as `shoal <tool> …`: each takes
//! that tool's own command line, not Shoal's flags.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::Path;
use std::process::ExitCode;

use shoal_render::handlebars_cmd;

/// Largest template read from stdin, in bytes.
const MAX_TEMPLATE: u64 = 16 << 20;

/// A tool `shoal` can be invoked as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    /// `handlebars-cmd`: a template on stdin rendered with `--key value` data.
    Handlebars,
}

impl Tool {
    /// The tool a program name (`argv[0]`, any directory) stands for, if any.
    pub fn from_program(argv0: &OsString) -> Option<Tool> {
        match Path::new(argv0).file_name()?.to_str()? {
            "handlebars" => Some(Tool::Handlebars),
            _ => None,
        }
    }

    /// Runs the tool with its arguments (without the program name).
    pub fn run(self, args: &[OsString]) -> ExitCode {
        match self {
            Tool::Handlebars => handlebars(args),
        }
    }
}

/// `handlebars [data.json] [--key value]… [--strict] < template > output`.
fn handlebars(args: &[OsString]) -> ExitCode {
    let fail = |why: &dyn std::fmt::Display| {
        eprintln!("handlebars: {why}");
        ExitCode::FAILURE
    };
    let invocation = match handlebars_cmd::parse(args) {
        Ok(i) => i,
        Err(e) => return fail(&e),
    };
    let mut template = Vec::new();
    if let Err(e) = std::io::stdin().lock().take(MAX_TEMPLATE + 1).read_to_end(&mut template) {
        return fail(&format_args!("cannot read the template from stdin: {e}"));
    }
    if template.len() as u64 > MAX_TEMPLATE {
        return fail(&format_args!("the template on stdin is larger than {MAX_TEMPLATE} bytes"));
    }
    let Ok(template) = String::from_utf8(template) else {
        return fail(&"the template on stdin is not UTF-8");
    };
    let out = match shoal_render::template::render("stdin", &template, &invocation.data, invocation.strict) {
        Ok(out) => out,
        Err(e) => return fail(&e),
    };
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_all(out.as_bytes()).and_then(|()| stdout.flush()) {
        return fail(&format_args!("cannot write the output: {e}"));
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tools_are_known_by_their_program_name_in_any_directory() {
        assert_eq!(Tool::from_program(&"handlebars".into()), Some(Tool::Handlebars));
        assert_eq!(Tool::from_program(&"/usr/local/bin/handlebars".into()), Some(Tool::Handlebars));
        assert_eq!(Tool::from_program(&"/usr/bin/shoal".into()), None);
        assert_eq!(Tool::from_program(&"handlebars-cmd".into()), None);
    }
}
