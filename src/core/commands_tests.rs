//! The command parser: a table of comments as people write them, then generated comments
//! whose expected commands follow from how each line was generated.

use proptest::prelude::*;

use super::commands::{parse, BotCommand, CommandError};
use crate::core::change::Priority;

const BOT: &str = "mergequeue";

fn approve() -> BotCommand {
    BotCommand::Approve {
        approvers: vec![],
        priority: None,
    }
}

fn approve_p(p: Priority) -> BotCommand {
    BotCommand::Approve {
        approvers: vec![],
        priority: Some(p),
    }
}

fn approve_as(names: &[&str]) -> BotCommand {
    BotCommand::Approve {
        approvers: names.iter().map(|s| s.to_string()).collect(),
        priority: None,
    }
}

fn unknown(w: &str) -> Result<BotCommand, CommandError> {
    Err(CommandError::Unknown(w.into()))
}

#[test]
fn the_table() {
    use BotCommand::*;
    use Priority::*;
    let ok = Ok::<BotCommand, CommandError>;
    let cases: Vec<(&str, Vec<Result<BotCommand, CommandError>>)> = vec![
        // The basic commands.
        ("@mergequeue r+", vec![ok(approve())]),
        ("@mergequeue merge", vec![ok(approve())]),
        ("@mergequeue r-", vec![ok(Cancel)]),
        ("@mergequeue cancel", vec![ok(Cancel)]),
        ("@mergequeue retry", vec![ok(Retry)]),
        ("@mergequeue p=high", vec![ok(SetPriority(High))]),
        ("@mergequeue priority=low", vec![ok(SetPriority(Low))]),
        ("@mergequeue p=urgent", vec![ok(SetPriority(Urgent))]),
        ("@mergequeue p=normal", vec![ok(SetPriority(Normal))]),
        // Priorities with an approval belong to it.
        ("@mergequeue r+ p=high", vec![ok(approve_p(High))]),
        ("@mergequeue p=urgent r+", vec![ok(approve_p(Urgent))]),
        ("@mergequeue merge p=low", vec![ok(approve_p(Low))]),
        (
            "@mergequeue r=alice p=high",
            vec![ok(BotCommand::Approve {
                approvers: vec!["alice".into()],
                priority: Some(High),
            })],
        ),
        // Priorities that are not.
        (
            "@mergequeue p=1",
            vec![Err(CommandError::BadPriority("1".into()))],
        ),
        (
            "@mergequeue p=-1",
            vec![Err(CommandError::BadPriority("-1".into()))],
        ),
        (
            "@mergequeue p=",
            vec![Err(CommandError::MissingValue("p".into()))],
        ),
        (
            "@mergequeue p=critical",
            vec![Err(CommandError::BadPriority("critical".into()))],
        ),
        (
            "@mergequeue r+ p=soon",
            vec![ok(approve()), Err(CommandError::BadPriority("soon".into()))],
        ),
        // r= lists.
        ("@mergequeue r=alice", vec![ok(approve_as(&["alice"]))]),
        (
            "@mergequeue r=alice,bob",
            vec![ok(approve_as(&["alice", "bob"]))],
        ),
        ("@mergequeue r=@alice", vec![ok(approve_as(&["alice"]))]),
        (
            "@mergequeue r=alice,alice",
            vec![ok(approve_as(&["alice"]))],
        ),
        (
            "@mergequeue r=Alice-B_c.d",
            vec![ok(approve_as(&["Alice-B_c.d"]))],
        ),
        (
            "@mergequeue r=",
            vec![Err(CommandError::MissingValue("r".into()))],
        ),
        // A trailing comma is punctuation, a doubled one an empty name.
        ("@mergequeue r=alice,", vec![ok(approve_as(&["alice"]))]),
        (
            "@mergequeue r=alice,,bob",
            vec![Err(CommandError::BadName("".into()))],
        ),
        (
            "@mergequeue r=al/ice",
            vec![Err(CommandError::BadName("al/ice".into()))],
        ),
        ("@mergequeue r=alice.", vec![ok(approve_as(&["alice"]))]),
        // Case.
        ("@MergeQueue r+", vec![ok(approve())]),
        ("@MERGEQUEUE R+", vec![ok(approve())]),
        ("@mergequeue Merge", vec![ok(approve())]),
        ("@mergequeue RETRY", vec![ok(Retry)]),
        ("@mergequeue P=HIGH", vec![ok(SetPriority(High))]),
        ("@mergequeue r=Alice", vec![ok(approve_as(&["Alice"]))]),
        // Trailing punctuation.
        ("@mergequeue r+.", vec![ok(approve())]),
        ("@mergequeue r+!", vec![ok(approve())]),
        ("@mergequeue retry?", vec![ok(Retry)]),
        ("@mergequeue r-;", vec![ok(Cancel)]),
        ("@mergequeue p=high.", vec![ok(SetPriority(High))]),
        // Separators after the mention, and whitespace.
        ("@mergequeue: r+", vec![ok(approve())]),
        ("@mergequeue, r+", vec![ok(approve())]),
        ("@mergequeue:r+", vec![ok(approve())]),
        ("   @mergequeue r+", vec![ok(approve())]),
        ("@mergequeue   r+   ", vec![ok(approve())]),
        ("@mergequeue\tr+", vec![ok(approve())]),
        ("@mergequeue r+\r\n", vec![ok(approve())]),
        // Mentions of other users or bots.
        ("@bors r+", vec![]),
        ("@mergequeue-dev r+", vec![]),
        ("@mergequeuebot r+", vec![]),
        ("@merge r+", vec![]),
        ("cc @mergequeue r+", vec![]),
        ("thanks! @mergequeue r+", vec![]),
        ("mergequeue r+", vec![]),
        ("@mergequeue r+ @alice please look", vec![ok(approve())]),
        ("@mergequeue @alice r+", vec![]),
        ("@alice @mergequeue r+", vec![]),
        ("email@mergequeue r+", vec![]),
        // Nothing or prose after the mention.
        ("@mergequeue", vec![]),
        ("@mergequeue hello", vec![unknown("hello")]),
        ("@mergequeue r+ thanks!", vec![ok(approve())]),
        ("@mergequeue r+ looks good to me", vec![ok(approve())]),
        ("@mergequeue please r+", vec![unknown("please")]),
        ("@mergequeue try", vec![unknown("try")]),
        ("@mergequeue rollup", vec![unknown("rollup")]),
        ("@mergequeue delegate=bob", vec![unknown("delegate=bob")]),
        ("@mergequeue +r", vec![unknown("+r")]),
        ("@mergequeue r", vec![unknown("r")]),
        // Several commands in one comment.
        ("@mergequeue r- r+", vec![ok(Cancel), ok(approve())]),
        ("Looks good.\n@mergequeue r+\nThanks", vec![ok(approve())]),
        (
            "@mergequeue r-\n@mergequeue r+ p=high",
            vec![ok(Cancel), ok(approve_p(High))],
        ),
        (
            "@mergequeue retry\n\n@mergequeue p=low",
            vec![ok(Retry), ok(SetPriority(Low))],
        ),
        (
            "@mergequeue r+\n@bors r+\n@mergequeue hmm",
            vec![ok(approve()), unknown("hmm")],
        ),
        // Code blocks.
        ("```\n@mergequeue r+\n```", vec![]),
        ("~~~\n@mergequeue r+\n~~~", vec![]),
        (
            "```text\n@mergequeue r+\n```\n@mergequeue retry",
            vec![ok(Retry)],
        ),
        ("````\n```\n@mergequeue r+\n````", vec![]),
        ("```\n@mergequeue r+", vec![]),
        ("~~~\n@mergequeue r+\n```\n@mergequeue retry", vec![]),
        ("    @mergequeue r+", vec![]),
        ("\t@mergequeue r+", vec![]),
        ("`@mergequeue r+`", vec![]),
        ("``` @mergequeue r+ ```\n@mergequeue retry", vec![ok(Retry)]),
        // Quotes.
        ("> @mergequeue r+", vec![]),
        (">@mergequeue r+", vec![]),
        ("> > @mergequeue r+", vec![]),
        ("> quoting\n@mergequeue r-", vec![ok(Cancel)]),
        // HTML comments are not visible, so they hold no command.
        ("<!-- @mergequeue r+ -->", vec![]),
        ("<!--\n@mergequeue r+\n-->", vec![]),
        ("<!-- note -->@mergequeue r+", vec![ok(approve())]),
        ("<!-- a -->\n@mergequeue r+", vec![ok(approve())]),
        ("@mergequeue r+ <!-- p=high -->", vec![ok(approve())]),
        ("<!-- unterminated\n@mergequeue r+", vec![]),
        ("<!--\n-->\n@mergequeue retry", vec![ok(Retry)]),
        // What a reader sees counts: a comment inside the mention disappears.
        ("@merge<!-- x -->queue r+", vec![ok(approve())]),
        // Other Markdown around a mention.
        ("- @mergequeue r+", vec![]),
        ("**@mergequeue r+**", vec![]),
        ("# @mergequeue r+", vec![]),
        ("[@mergequeue r+](https://example.org)", vec![]),
        // Unicode around it stays harmless.
        ("@mergequeue r+ 👍", vec![ok(approve())]),
        ("@mergequeué r+", vec![]),
        ("👍 @mergequeue r+", vec![]),
        ("@mergequeue 👍", vec![unknown("👍")]),
    ];
    assert!(cases.len() >= 60, "{} cases", cases.len());
    for (body, want) in cases {
        assert_eq!(parse(body, BOT), want, "comment {body:?}");
    }
}

#[test]
fn the_bot_name_is_matched_as_given_without_case() {
    assert_eq!(parse("@My-Bot r+", "my-bot"), vec![Ok(approve())]);
    assert_eq!(parse("@my-bot[bot] r+", "my-bot[bot]"), vec![Ok(approve())]);
    assert_eq!(parse("@x r+", ""), vec![]);
}

/// One line of a generated comment and what it should yield.
#[derive(Debug, Clone)]
enum Line {
    /// Addressed to the bot: these words, and the commands they mean.
    Commands(Vec<(String, BotCommand)>, Option<Priority>, String),
    Prose(String),
    /// Would be commands, but hidden (quoted, fenced, indented, HTML comment, other bot).
    Hidden(String),
}

fn priority() -> impl Strategy<Value = Priority> {
    prop_oneof![
        Just(Priority::Urgent),
        Just(Priority::High),
        Just(Priority::Normal),
        Just(Priority::Low)
    ]
}

fn word() -> impl Strategy<Value = (String, BotCommand)> {
    let name = "[a-z][a-z0-9-]{0,8}";
    prop_oneof![
        prop_oneof![Just("r+"), Just("merge"), Just("R+"), Just("Merge")]
            .prop_map(|w| (w.to_string(), approve())),
        prop_oneof![Just("r-"), Just("cancel"), Just("CANCEL")]
            .prop_map(|w| (w.to_string(), BotCommand::Cancel)),
        prop_oneof![Just("retry"), Just("Retry")].prop_map(|w| (w.to_string(), BotCommand::Retry)),
        proptest::collection::vec(name, 1..4).prop_map(|names| {
            let mut uniq: Vec<String> = vec![];
            for n in &names {
                if !uniq.contains(n) {
                    uniq.push(n.clone());
                }
            }
            let cmd = BotCommand::Approve {
                approvers: uniq,
                priority: None,
            };
            (format!("r={}", names.join(",")), cmd)
        }),
    ]
}

fn line() -> impl Strategy<Value = Line> {
    let commands = (
        proptest::collection::vec(word(), 1..4),
        proptest::option::of(priority()),
        prop_oneof![
            Just(String::new()),
            Just(" thanks!".to_string()),
            Just(" @alice fyi".to_string()),
            Just(" <!-- p=low -->".to_string()),
        ],
    )
        .prop_map(|(words, p, tail)| Line::Commands(words, p, tail));
    let hidden_cmd = "(r\\+|r-|retry|merge|p=high)";
    prop_oneof![
        3 => commands,
        1 => "[A-Za-z ,.!]{0,30}".prop_map(Line::Prose),
        1 => hidden_cmd.prop_map(|c| Line::Hidden(format!("> @mergequeue {c}"))),
        1 => hidden_cmd.prop_map(|c| Line::Hidden(format!("```\n@mergequeue {c}\n```"))),
        1 => hidden_cmd.prop_map(|c| Line::Hidden(format!("    @mergequeue {c}"))),
        1 => hidden_cmd.prop_map(|c| Line::Hidden(format!("<!-- @mergequeue {c} -->"))),
        1 => hidden_cmd.prop_map(|c| Line::Hidden(format!("@mergequeue-dev {c}"))),
        1 => hidden_cmd.prop_map(|c| Line::Hidden(format!("cc @mergequeue {c}"))),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Each addressed line yields its words' commands in order, with a priority folded
    /// into the line's first approval; hidden lines and prose yield nothing.
    #[test]
    fn generated_comments_yield_what_their_lines_say(lines in proptest::collection::vec(line(), 0..8)) {
        let mut text = vec![];
        let mut want = vec![];
        for l in &lines {
            match l {
                Line::Commands(words, p, tail) => {
                    let mut w: Vec<String> = words.iter().map(|(w, _)| w.clone()).collect();
                    if let Some(p) = p {
                        w.push(format!("p={}", p.as_str()));
                    }
                    text.push(format!("@mergequeue {}{tail}", w.join(" ")));
                    let mut cmds: Vec<BotCommand> = words.iter().map(|(_, c)| c.clone()).collect();
                    if let Some(p) = p {
                        match cmds.iter_mut().find(|c| matches!(c, BotCommand::Approve { .. })) {
                            Some(BotCommand::Approve { priority, .. }) => *priority = Some(*p),
                            _ => cmds.push(BotCommand::SetPriority(*p)),
                        }
                    }
                    want.extend(cmds.into_iter().map(Ok));
                }
                Line::Prose(t) => text.push(t.clone()),
                Line::Hidden(t) => text.push(t.clone()),
            }
        }
        let body = text.join("\n");
        prop_assert_eq!(parse(&body, BOT), want, "comment {:?}", body);
    }

    /// Any text: no panic, and nothing without an `@`.
    #[test]
    fn arbitrary_text_never_panics(body in "(?s).{0,400}") {
        let got = parse(&body, BOT);
        if !body.contains('@') {
            prop_assert!(got.is_empty());
        }
    }
}
