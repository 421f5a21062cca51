//! The runtime API's command list and HAProxy's answers built from it: `help [<command>]`,
//! and for a command it does not know, HAProxy 2.6's "Unknown command" text with its
//! fuzzy-matched suggestions (the same word fingerprints and distances as HAProxy's
//! `cli_gen_usage_msg`). What each command does lives in the sibling modules.

/// One command: its leading keywords and the help line HAProxy prints for it.
#[derive(Debug, Clone, Copy)]
pub struct Keyword {
    /// The words that name it (`["show", "servers", "state"]`).
    pub words: &'static [&'static str],
    /// Its help line, padded as HAProxy pads it.
    pub usage: &'static str,
}

const fn kw(words: &'static [&'static str], usage: &'static str) -> Keyword {
    Keyword { words, usage }
}

/// Every command but `help`, `prompt` and `quit`, which HAProxy always lists last.
pub const KEYWORDS: &[Keyword] = &[
    kw(&["add", "server"], "add server <bk>/<srv>                   : create a new server"),
    kw(
        &["auth"],
        "auth <token>                            : authenticate (runtime API on TCP, with a token)",
    ),
    kw(
        &["clear", "counters"],
        "clear counters [all]                    : clear max statistics counters (or all counters)",
    ),
    kw(&["del", "server"], "del server <bk>/<srv>                   : remove a dynamically added server"),
    kw(
        &["disable", "server"],
        "disable server (DEPRECATED)             : disable a server for maintenance (use 'set server' instead)",
    ),
    kw(
        &["enable", "server"],
        "enable server  (DEPRECATED)             : enable a disabled server (use 'set server' instead)",
    ),
    kw(&["get", "weight"], "get weight <bk>/<srv>                   : report a server's current weight"),
    kw(
        &["set", "server"],
        "set server <bk>/<srv> [opts]            : change a server's state, weight, address or health",
    ),
    kw(&["set", "timeout"], "set timeout [cli] <delay>               : change a timeout setting"),
    kw(
        &["set", "weight"],
        "set weight <bk>/<srv>  (DEPRECATED)     : change a server's weight (use 'set server' instead)",
    ),
    kw(
        &["show", "backend"],
        "show backend                            : list backends in the current running config",
    ),
    kw(
        &["show", "env"],
        "show env [var]                          : dump environment variables known to the process",
    ),
    kw(
        &["show", "info"],
        "show info [desc|json|typed|float]*      : report information about the running process",
    ),
    kw(
        &["show", "servers", "conn"],
        "show servers conn [<backend>]           : dump server connections status (all or for a single backend)",
    ),
    kw(
        &["show", "servers", "state"],
        "show servers state [<backend>]          : dump volatile server information (all or for a single backend)",
    ),
    kw(
        &["show", "stat"],
        "show stat [desc|json|no-maint|typed|up]*: report counters for each proxy and server",
    ),
    kw(&["show", "version"], "show version                            : show version of the current process"),
];

/// The lines HAProxy always ends a command list with.
const ALWAYS: &str = "  help [<command>]                        : list matching or all commands\n  \
                      prompt                                  : toggle interactive mode with prompt\n  \
                      quit                                    : disconnect\n";

/// How many words of a command line HAProxy compares (`CLI_PREFIX_KW_NB`).
const PREFIX_WORDS: usize = 5;
/// How many fuzzy suggestions at most (`CLI_MAX_MATCHES`).
const MAX_MATCHES: usize = 5;

/// How many leading words of `kw` and `args` are equal, up to `limit`.
fn common(kw: &Keyword, args: &[&str], limit: usize) -> usize {
    kw.words.iter().zip(args).take(limit).take_while(|(w, a)| w == a).count()
}

/// HAProxy's answer to `help [<words>]` (`help` true) or to a command it does not know.
pub fn usage(args: &[&str], help: bool) -> String {
    let args = &args[..args.len().min(PREFIX_WORDS)];
    let length = KEYWORDS.iter().map(|k| common(k, args, PREFIX_WORDS)).max().unwrap_or(0);
    let mut out = String::from(if help {
        "The following commands are valid at this level:\n"
    } else if length == 0 && args.is_empty() {
        "Unknown command. Please enter one of the following commands only:\n"
    } else {
        "Unknown command, but maybe one of the following ones is a better match:\n"
    });
    let prefixed = |k: &&Keyword| common(k, args, length) == length;
    let mut entries: Vec<&Keyword> = match args.get(length) {
        Some(_) => suggestions(args, length),
        None => Vec::new(),
    };
    if entries.is_empty() {
        entries = KEYWORDS.iter().filter(prefixed).collect();
    }
    entries.sort_by_key(|k| k.usage);
    for k in entries {
        out.push_str("  ");
        out.push_str(k.usage);
        out.push('\n');
    }
    out.push_str(ALWAYS);
    out
}

/// The commands nearest to `args` beyond their first `length` words, best first: at most
/// [`MAX_MATCHES`], none much worse than the best.
fn suggestions(args: &[&str], length: usize) -> Vec<&'static Keyword> {
    let mut matches: Vec<(usize, &Keyword)> = Vec::new();
    for k in KEYWORDS.iter().filter(|k| common(k, args, length) == length && k.words.len() > length) {
        let mut typed = Fingerprint::new();
        let mut listed = Fingerprint::new();
        let mut total = 0;
        for a in &args[length..] {
            typed.add(a);
            total += a.len();
        }
        for w in &k.words[length..] {
            listed.add(w);
            total += w.len();
        }
        let dist = typed.distance(&listed);
        let worst = if matches.len() < MAX_MATCHES { usize::MAX } else { matches[MAX_MATCHES - 1].0 };
        if dist < 5 * total / 2 && dist < worst {
            matches.truncate(MAX_MATCHES - 1);
            let at = matches.iter().position(|(d, _)| *d > dist).unwrap_or(matches.len());
            matches.insert(at, (dist, k));
        }
    }
    let best = matches.first().map_or(0, |m| m.0);
    matches.into_iter().take_while(|(d, _)| *d <= 5 * best / 2).map(|(_, k)| k).collect()
}

/// HAProxy's word fingerprint: which characters occur and how often each character follows
/// another (`update_word_fingerprint`), letters folded, digits and others as one class each.
struct Fingerprint([u8; 1024]);

impl Fingerprint {
    fn new() -> Fingerprint {
        Fingerprint([0; 1024])
    }

    fn add(&mut self, word: &str) {
        let mut from = 28;
        for c in word.bytes() {
            let to = match c.to_ascii_lowercase() {
                c @ b'a'..=b'z' => usize::from(c - b'a') + 1,
                b'0'..=b'9' => 27,
                _ => 28,
            };
            self.0[to] = 1;
            self.0[32 * from + to] = self.0[32 * from + to].wrapping_add(1);
            from = to;
        }
        self.0[32 * from + 28] = self.0[32 * from + 28].wrapping_add(1);
    }

    fn distance(&self, other: &Fingerprint) -> usize {
        self.0.iter().zip(&other.0).map(|(a, b)| a.abs_diff(*b) as usize).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_lists_every_command_in_haproxys_layout() {
        let help = usage(&[], true);
        assert!(
            help.starts_with("The following commands are valid at this level:\n  add server <bk>/<srv>  ")
        );
        assert!(help.ends_with("  quit                                    : disconnect\n"));
        for k in KEYWORDS {
            assert!(help.contains(k.usage), "{}", k.usage);
            assert_eq!(k.usage.find(':'), Some(40), "the colon in column 40: {}", k.usage);
        }
        let show = usage(&["show", "s"], true);
        let listed: Vec<&str> = show.lines().skip(1).collect();
        assert!(
            listed.len() > 3 && listed[..listed.len() - 3].iter().all(|l| l.starts_with("  show ")),
            "{show}"
        );
    }

    #[test]
    fn an_unknown_command_gets_haproxys_suggestions() {
        // As HAProxy 2.6 answers `show foo` with Shoal's commands: near words first, the rest
        // dropped.
        let foo = usage(&["show", "foo"], false);
        assert!(foo.starts_with("Unknown command, but maybe one of the following ones is a better match:\n"));
        assert!(foo.contains("  show info ") && !foo.contains("add server"), "{foo}");
        let stats = usage(&["show", "stats"], false);
        assert!(stats.lines().nth(1).is_some_and(|l| l.starts_with("  show stat ")), "{stats}");
        assert!(
            usage(&[], false)
                .starts_with("Unknown command. Please enter one of the following commands only:\n")
        );
    }

    #[test]
    fn fingerprints_are_haproxys() {
        let mut a = Fingerprint::new();
        a.add("stat");
        let mut b = Fingerprint::new();
        b.add("stat");
        assert_eq!(a.distance(&b), 0);
        let mut c = Fingerprint::new();
        c.add("info");
        // s,t,a present (3) + 5 transitions vs i,n,f,o (4) + 5 transitions.
        assert_eq!(a.distance(&c), 3 + 5 + 4 + 5);
    }
}
