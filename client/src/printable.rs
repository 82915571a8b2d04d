//! How `tally` shows a message text to a person: quoted, on one line, with every
//! character that would be invisible or would move the cursor spelled out.
//!
//! Invariant: the shown form has no control or invisible format characters, so
//! two texts that print the same differ at most in characters a person can see
//! (a byte-order mark, a zero-width space or a bidi override is shown as
//! `<U+FEFF>`, `<U+200B>`, `<U+202E>`; a newline as `\n`). Letters of any
//! script stay as they are, unlike `{:?}`, which also writes `\u{feff}`.

/// `text` quoted, its invisible and control characters spelled out.
pub fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() || is_invisible(c) => {
                out.push_str(&format!("<U+{:04X}>", u32::from(c)));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The first `max` characters of `text`, with `…` when something was cut.
pub fn shorten(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}

/// Format characters (Unicode category Cf) and separators that draw nothing or
/// reorder what follows; the ones a terminal would silently swallow.
fn is_invisible(c: char) -> bool {
    matches!(
        u32::from(c),
        0x00AD
            | 0x034F
            | 0x061C
            | 0x115F..=0x1160
            | 0x17B4..=0x17B5
            | 0x180B..=0x180F
            | 0x200B..=0x200F
            | 0x2028..=0x202E
            | 0x2060..=0x206F
            | 0x3164
            | 0xFEFF
            | 0xFFA0
            | 0xFFF0..=0xFFFB
            | 0x1D173..=0x1D17A
            | 0xE0000..=0xE0FFF
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invisible_and_control_characters_are_spelled_out() {
        assert_eq!(printable("\u{feff}hello"), "\"<U+FEFF>hello\"");
        assert_eq!(printable("a\u{200b}b\u{202e}c"), "\"a<U+200B>b<U+202E>c\"");
        assert_eq!(
            printable("bell\u{7}\u{1b}[2J"),
            "\"bell<U+0007><U+001B>[2J\""
        );
        assert_eq!(printable("a\tb\r\nc"), "\"a\\tb\\r\\nc\"");
        assert_eq!(printable("say \"hi\" \\o/"), "\"say \\\"hi\\\" \\\\o/\"");
    }

    #[test]
    fn letters_of_any_script_and_emoji_stay_as_they_are() {
        for text in ["grüße", "日本語", "مرحبا", "👍🏽", "e\u{301}", "❤\u{fe0f}"] {
            assert_eq!(printable(text), format!("\"{text}\""));
        }
    }

    #[test]
    fn shorten_cuts_at_characters_not_bytes() {
        assert_eq!(shorten("héllo", 2), "hé…");
        assert_eq!(shorten("héllo", 5), "héllo");
    }
}
