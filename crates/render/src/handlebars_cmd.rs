//! `handlebars-cmd`'s command line, so scripts written against it run unchanged under
//! `shoal handlebars` (or a `handlebars` symlink to `shoal`): the template comes on stdin, the
//! data from `--key value` pairs and an optional JSON file, the output goes to stdout.
//!
//! - `--key value` and `--key=value`: a value that parses as JSON is that JSON (`--port 3000` a
//!   number, `--addresses '[{"host":"s1"}]'` a list), anything else is a string (`--name s1`);
//!   a `--key` with no value after it (the last argument, or one followed by another `--key`)
//!   is `true`, as in handlebars-cmd's argument parser.
//! - One positional argument: a JSON file whose object is the data; `--key` pairs are laid over
//!   it.
//! - `--strict`: a missing value is an error rather than an empty string.
//!
//! Rendering is [`crate::template::render`]'s: the same helpers and bounds, and no HTML escaping
//! (configuration files are not HTML).

use std::ffi::OsString;
use std::path::PathBuf;

use serde_json::{Map, Value};

/// Largest data file read, in bytes.
pub const MAX_DATA_FILE: u64 = 16 << 20;

/// What a command line asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct Invocation {
    /// The data the template sees.
    pub data: Value,
    /// Missing values are errors.
    pub strict: bool,
}

/// A command line `handlebars-cmd` would not run, or a data file it could not read.
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    /// An argument that is not text.
    #[error("argument {0:?} is not valid UTF-8")]
    NotText(OsString),
    /// `-x`: handlebars-cmd takes long options only.
    #[error("unknown option {0:?} (options are --key value pairs and --strict)")]
    ShortOption(String),
    /// `--` or `--=value`: an option with no name.
    #[error("an option needs a name: {0:?}")]
    NoName(String),
    /// More than one data file.
    #[error("unexpected argument {0:?}: one JSON data file at most")]
    ExtraPositional(String),
    /// The data file could not be read.
    #[error("cannot read the data file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The data file is larger than [`MAX_DATA_FILE`].
    #[error("the data file {0} is larger than {MAX_DATA_FILE} bytes")]
    TooLarge(PathBuf),
    /// The data file is not a JSON object.
    #[error("the data file {path} is not a JSON object: {why}")]
    NotAnObject {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

/// Reads a command line (without the program name) as handlebars-cmd does.
pub fn parse(args: &[OsString]) -> Result<Invocation, UsageError> {
    let args: Vec<&str> = args
        .iter()
        .map(|a| a.to_str().ok_or_else(|| UsageError::NotText(a.clone())))
        .collect::<Result<_, _>>()?;
    let mut data = Map::new();
    let mut file: Option<&str> = None;
    let mut strict = false;
    let mut i = 0;
    while i < args.len() {
        let arg = args[i];
        i += 1;
        let Some(option) = arg.strip_prefix("--") else {
            if arg.starts_with('-') && arg.len() > 1 {
                return Err(UsageError::ShortOption(arg.to_string()));
            }
            if file.replace(arg).is_some() {
                return Err(UsageError::ExtraPositional(arg.to_string()));
            }
            continue;
        };
        let (key, value) = match option.split_once('=') {
            Some((key, value)) => (key, Some(value)),
            None if args.get(i).is_some_and(|next| !next.starts_with("--")) => {
                i += 1;
                (option, Some(args[i - 1]))
            }
            None => (option, None),
        };
        if key.is_empty() {
            return Err(UsageError::NoName(arg.to_string()));
        }
        if key == "strict" && value.is_none() {
            strict = true;
            continue;
        }
        data.insert(key.to_string(), value.map_or(Value::Bool(true), value_of));
    }
    let data = match file {
        None => Value::Object(data),
        Some(path) => {
            let mut base = read_object(PathBuf::from(path))?;
            base.extend(data);
            Value::Object(base)
        }
    };
    Ok(Invocation { data, strict })
}

/// A `--key` value: its JSON when it parses as JSON, the text otherwise.
fn value_of(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
}

fn read_object(path: PathBuf) -> Result<Map<String, Value>, UsageError> {
    use std::io::Read;
    let file =
        std::fs::File::open(&path).map_err(|source| UsageError::Read { path: path.clone(), source })?;
    let mut text = Vec::new();
    file.take(MAX_DATA_FILE + 1)
        .read_to_end(&mut text)
        .map_err(|source| UsageError::Read { path: path.clone(), source })?;
    if text.len() as u64 > MAX_DATA_FILE {
        return Err(UsageError::TooLarge(path));
    }
    match serde_json::from_slice(&text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(UsageError::NotAnObject { path, why: format!("it holds {}", kind(&other)) }),
        Err(e) => Err(UsageError::NotAnObject { path, why: e.to_string() }),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn values_that_parse_as_json_are_json_and_the_rest_are_strings() {
        let inv = parse(&args(&[
            "--addresses",
            r#"[{"host":"s1","ip":"10.0.0.2"}]"#,
            "--name",
            "web 1",
            "--port=3000",
            "--zero-padded",
            "007",
            "--on",
        ]))
        .unwrap();
        assert_eq!(
            inv.data,
            json!({
                "addresses": [{"host": "s1", "ip": "10.0.0.2"}],
                "name": "web 1",
                "port": 3000,
                "zero-padded": "007",
                "on": true,
            })
        );
        assert!(!inv.strict);
        assert!(parse(&args(&["--strict"])).unwrap().strict);
        assert_eq!(parse(&args(&["--flag", "--x", "1"])).unwrap().data, json!({"flag": true, "x": 1}));
    }

    #[test]
    fn a_data_file_is_the_base_and_pairs_lay_over_it() {
        let dir = std::env::temp_dir().join(format!("shoal-hbs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("data.json");
        std::fs::write(&file, r#"{"a": 1, "b": "file"}"#).unwrap();
        let inv = parse(&args(&[file.to_str().unwrap(), "--b", "flag"])).unwrap();
        assert_eq!(inv.data, json!({"a": 1, "b": "flag"}));

        std::fs::write(&file, "[1, 2]").unwrap();
        let e = parse(&args(&[file.to_str().unwrap()])).unwrap_err();
        assert!(e.to_string().contains("is not a JSON object: it holds a list"), "{e}");
        std::fs::write(&file, "{nope").unwrap();
        assert!(matches!(parse(&args(&[file.to_str().unwrap()])), Err(UsageError::NotAnObject { .. })));
        let missing = dir.join("missing.json");
        assert!(matches!(parse(&args(&[missing.to_str().unwrap()])), Err(UsageError::Read { .. })));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bad_command_lines_are_refused_with_the_reason() {
        assert!(matches!(parse(&args(&["-x"])), Err(UsageError::ShortOption(_))));
        assert!(matches!(parse(&args(&["--"])), Err(UsageError::NoName(_))));
        assert!(matches!(parse(&args(&["--=1"])), Err(UsageError::NoName(_))));
        assert!(matches!(parse(&args(&["a.json", "b.json"])), Err(UsageError::ExtraPositional(_))));
        use std::os::unix::ffi::OsStringExt;
        let not_text = vec![OsString::from("--k"), OsString::from_vec(vec![0xff, 0xfe])];
        assert!(matches!(parse(&not_text), Err(UsageError::NotText(_))));
    }
}
