//! Commands addressed to the bot in pull-request comments (`@mergequeue r+`), parsed by a
//! pure function: a comment's text and the bot's login in, commands (or why a command
//! could not be understood) out. Permission is not the parser's business: the shell asks
//! the forge about the commenter when a command arrives.
//!
//! The grammar (`docs/forge.md` shows it to users):
//! - A line holds commands when, after at most three spaces, it starts with `@BOT` (the
//!   login, compared without case) followed by a space, `:`, `,` or the end of the line;
//!   `@BOT-dev` and `cc @BOT` do not address the bot.
//! - Lines in fenced code blocks (` ``` ` or `~~~`), indented code (four spaces or a tab)
//!   and quotes (`>`) are ignored, and so is everything inside HTML comments. rust-lang/bors
//!   runs commands hidden in HTML comments; here an approval is always visible to whoever
//!   reads the pull request.
//! - After the mention come whitespace-separated words, read without case and with
//!   trailing `.`, `,`, `!`, `?` or `;` dropped: `r+` or `merge` (approve), `r=NAME[,NAME…]`
//!   (approve on behalf of NAME), `r-` or `cancel`, `p=PRIORITY` or `priority=PRIORITY`
//!   (`urgent`, `high`, `normal`, `low`), `retry`. A `p=` on the line of an approval sets the
//!   approval's priority.
//! - A word starting with `@` ends the line's commands (`@mergequeue r+ @alice fyi`). The
//!   first word must be a command, else the line is an unknown command; after the first
//!   command, a word that is not one ends the line (`@mergequeue r+ thanks!`).

use crate::core::change::Priority;

/// What a commenter asks of the bot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BotCommand {
    /// `r+`, `merge` or `r=NAMES`: approve at the current head and queue. `approvers` is
    /// empty when the commenter approves in their own name.
    Approve {
        approvers: Vec<String>,
        priority: Option<Priority>,
    },
    /// `r-` or `cancel`.
    Cancel,
    /// `p=PRIORITY` on a line without an approval.
    SetPriority(Priority),
    /// `retry`: queue a rejected pull request again.
    Retry,
}

/// A command the bot was given but could not understand; the reply quotes it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("unknown command {0:?} (known: r+, r=NAME, r-, p=PRIORITY, retry, merge, cancel)")]
    Unknown(String),
    #[error("{0}= needs a value")]
    MissingValue(String),
    #[error("unknown priority {0:?} (urgent, high, normal or low)")]
    BadPriority(String),
    #[error("{0:?} is not a user name")]
    BadName(String),
}

/// Everything a comment asks of `bot`, in order.
pub fn parse(body: &str, bot: &str) -> Vec<Result<BotCommand, CommandError>> {
    let mut out = vec![];
    for line in visible_lines(body) {
        if let Some(rest) = addressed(&line, bot) {
            parse_line(rest, &mut out);
        }
    }
    out
}

/// The comment's lines as a reader sees them at the top level: HTML comments removed,
/// code blocks and quotes dropped.
fn visible_lines(body: &str) -> Vec<String> {
    let mut lines = vec![];
    // The fence that opened the current code block: its character and length.
    let mut fence: Option<(char, usize)> = None;
    let mut in_html_comment = false;
    for raw in body.lines() {
        let indent = raw.len() - raw.trim_start_matches(' ').len();
        let trimmed = raw.trim_start_matches(' ');
        if let Some((c, n)) = fence {
            let run = trimmed.chars().take_while(|&x| x == c).count();
            if indent <= 3 && run >= n && trimmed[run * c.len_utf8()..].trim().is_empty() {
                fence = None;
            }
            continue;
        }
        let line = if in_html_comment {
            match raw.find("-->") {
                Some(end) => {
                    in_html_comment = false;
                    strip_html_comments(&raw[end + 3..], &mut in_html_comment)
                }
                None => continue,
            }
        } else {
            if indent <= 3 {
                let c = trimmed.chars().next();
                if let Some(c @ ('`' | '~')) = c {
                    let run = trimmed.chars().take_while(|&x| x == c).count();
                    // A backtick fence's info string may not hold a backtick.
                    let info = &trimmed[run..];
                    if run >= 3 && (c == '~' || !info.contains('`')) {
                        fence = Some((c, run));
                        continue;
                    }
                }
            }
            strip_html_comments(raw, &mut in_html_comment)
        };
        let indent = line.len() - line.trim_start_matches(' ').len();
        if indent >= 4 || line.starts_with('\t') {
            continue; // indented code
        }
        if line.trim_start().starts_with('>') {
            continue; // a quote
        }
        lines.push(line);
    }
    lines
}

/// `line` without its `<!-- … -->` parts; sets `open` when a comment runs past its end.
fn strip_html_comments(line: &str, open: &mut bool) -> String {
    let mut out = String::new();
    let mut rest = line;
    while let Some(start) = rest.find("<!--") {
        out.push_str(&rest[..start]);
        match rest[start + 4..].find("-->") {
            Some(end) => rest = &rest[start + 4 + end + 3..],
            None => {
                *open = true;
                return out;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The text after `@bot` when `line` addresses the bot.
fn addressed<'a>(line: &'a str, bot: &str) -> Option<&'a str> {
    let rest = line.trim_start().strip_prefix('@')?;
    let name = rest.get(..bot.len())?;
    if bot.is_empty() || !name.eq_ignore_ascii_case(bot) {
        return None;
    }
    let after = &rest[bot.len()..];
    match after.chars().next() {
        None => Some(after),
        Some(':' | ',') => Some(&after[1..]),
        Some(c) if c.is_whitespace() => Some(after),
        Some(_) => None,
    }
}

fn parse_line(rest: &str, out: &mut Vec<Result<BotCommand, CommandError>>) {
    let first = out.len();
    let mut priority: Option<Priority> = None;
    for (i, raw) in rest.split_whitespace().enumerate() {
        if raw.starts_with('@') {
            break;
        }
        let word = raw.trim_end_matches(['.', ',', '!', '?', ';']);
        match command(word) {
            Some(Ok(Word::Priority(p))) => priority = Some(p),
            Some(Ok(Word::Command(c))) => out.push(Ok(c)),
            Some(Err(e)) => out.push(Err(e)),
            None if i == 0 => {
                out.push(Err(CommandError::Unknown(word.to_string())));
                break;
            }
            // Prose after the commands.
            None => break,
        }
    }
    let Some(p) = priority else { return };
    // The line's approval takes its priority; without one it is a command of its own.
    let approval = out[first..].iter_mut().find_map(|c| match c {
        Ok(BotCommand::Approve { priority, .. }) => Some(priority),
        _ => None,
    });
    match approval {
        Some(slot) => *slot = Some(p),
        None => out.push(Ok(BotCommand::SetPriority(p))),
    }
}

enum Word {
    Command(BotCommand),
    Priority(Priority),
}

/// One word: `None` when it is not a command at all.
fn command(word: &str) -> Option<Result<Word, CommandError>> {
    let lower = word.to_ascii_lowercase();
    let approve = |approvers| {
        Word::Command(BotCommand::Approve {
            approvers,
            priority: None,
        })
    };
    Some(Ok(match lower.as_str() {
        "r+" | "merge" => approve(vec![]),
        "r-" | "cancel" => Word::Command(BotCommand::Cancel),
        "retry" => Word::Command(BotCommand::Retry),
        _ => {
            let (key, value) = word.split_once('=')?;
            let key = key.to_ascii_lowercase();
            match key.as_str() {
                "r" => match approvers(value) {
                    Ok(names) => approve(names),
                    Err(e) => return Some(Err(e)),
                },
                "p" | "priority" => {
                    if value.is_empty() {
                        return Some(Err(CommandError::MissingValue(key)));
                    }
                    match Priority::parse(&value.to_ascii_lowercase()) {
                        Some(p) => Word::Priority(p),
                        None => return Some(Err(CommandError::BadPriority(value.to_string()))),
                    }
                }
                _ => return None,
            }
        }
    }))
}

/// `r=`'s list: logins separated by commas, a leading `@` allowed.
fn approvers(value: &str) -> Result<Vec<String>, CommandError> {
    if value.is_empty() {
        return Err(CommandError::MissingValue("r".into()));
    }
    let mut names = vec![];
    for n in value.split(',') {
        let n = n.strip_prefix('@').unwrap_or(n);
        let valid = !n.is_empty()
            && n.len() <= 100
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !valid {
            return Err(CommandError::BadName(n.to_string()));
        }
        if !names.iter().any(|x: &String| x.eq_ignore_ascii_case(n)) {
            names.push(n.to_string());
        }
    }
    Ok(names)
}
