//! The tools of the reference stack that `shoal` stands in for when invoked under their name (a
//! symlink such as `/usr/local/bin/handlebars -> shoal`) or as `shoal <tool> …`: each takes
//! that tool's own command line, not Shoal's flags.

mod contenv;
mod handlebars;
mod s6;
mod serf;

pub use serf::{Serf, translate as serf};

use std::ffi::OsString;
use std::path::Path;
use std::process::ExitCode;

/// A tool `shoal` can be invoked as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    /// `handlebars-cmd`: a template on stdin rendered with `--key value` data.
    Handlebars,
    /// s6-overlay's `with-contenv`: a command run with the container's environment.
    WithContenv,
    /// s6's `s6-svc`: commands to a supervised service.
    S6Svc,
    /// s6's `s6-svscanctl`: commands to the supervision tree.
    S6Svscanctl,
    /// s6's `s6-svstat`: a supervised service's state.
    S6Svstat,
}

impl Tool {
    /// The tool a program name (`argv[0]`, any directory) stands for, if any.
    pub fn from_program(argv0: &OsString) -> Option<Tool> {
        match Path::new(argv0).file_name()?.to_str()? {
            "handlebars" => Some(Tool::Handlebars),
            "with-contenv" => Some(Tool::WithContenv),
            "s6-svc" => Some(Tool::S6Svc),
            "s6-svscanctl" => Some(Tool::S6Svscanctl),
            "s6-svstat" => Some(Tool::S6Svstat),
            _ => None,
        }
    }

    /// Runs the tool with its arguments (without the program name).
    pub fn run(self, args: &[OsString]) -> ExitCode {
        match self {
            Tool::Handlebars => handlebars::handlebars(args),
            Tool::WithContenv => contenv::with_contenv(args),
            Tool::S6Svc => s6::svc(args),
            Tool::S6Svscanctl => s6::svscanctl(args),
            Tool::S6Svstat => s6::svstat(args),
        }
    }
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
        assert_eq!(Tool::from_program(&"/usr/bin/with-contenv".into()), Some(Tool::WithContenv));
        assert_eq!(Tool::from_program(&"/bin/s6-svc".into()), Some(Tool::S6Svc));
    }
}
