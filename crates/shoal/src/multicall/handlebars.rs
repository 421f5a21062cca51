//! `handlebars`: handlebars-cmd's command line over Shoal's template engine.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::process::ExitCode;

use shoal_render::handlebars_cmd;

/// Largest template read from stdin, in bytes.
const MAX_TEMPLATE: u64 = 16 << 20;

/// `handlebars [data.json] [--key value]… [--strict] < template > output`.
pub fn handlebars(args: &[OsString]) -> ExitCode {
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
