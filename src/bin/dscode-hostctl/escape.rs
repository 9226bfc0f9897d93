//! Host-controlled text made safe for the operator's terminal: control
//! characters shown as `\xNN` ([`esc`]), and JSON for people with DEL and C1
//! controls written as `\u00XX` ([`esc_json`]).

use std::borrow::Cow;

/// Shows control characters a host may have put in a string as visible
/// text, so that nothing it sends can drive the operator's terminal: every
/// C0 control but tab (so ESC, BEL, CR, LF, backspace), DEL and the C1
/// controls U+0080–U+009F become `\xNN` (two lowercase hex digits of the
/// code point, as Python's `repr` writes them). Everything else, backslashes
/// included, is printed as is, so the escaping is for reading, not a
/// reversible encoding; `--json` and `logs --raw` give the exact text.
pub(crate) fn esc(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_control) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if is_control(c) {
            out.push_str(&format!("\\x{:02x}", c as u32));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

pub(crate) fn is_control(c: char) -> bool {
    c.is_control() && c != '\t'
}

/// JSON text for a person: serde_json already writes C0 controls as
/// `\u00XX`; DEL and C1 controls are written the same way (still the same
/// JSON value), so pretty-printed results are as safe as [`esc`]'s output.
pub(crate) fn esc_json(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_control) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if is_control(c) && c != '\n' {
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// An optional string for a person: escaped, `-` when absent.
pub(crate) fn esc_or_dash(s: Option<&str>) -> Cow<'_, str> {
    s.map(esc).unwrap_or(Cow::Borrowed("-"))
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    #[test]
    fn controls_are_shown_as_hex_escapes() {
        assert!(matches!(esc("plain\ttext é ✓"), Cow::Borrowed(_)));
        assert_eq!(esc("\x1b]52;c;ZXZpbA==\x07"), r"\x1b]52;c;ZXZpbA==\x07");
        assert_eq!(esc("\x1b[31mred\x1b[0m"), r"\x1b[31mred\x1b[0m");
        assert_eq!(esc("a\rb\nc\x08\x00"), r"a\x0db\x0ac\x08\x00");
        assert_eq!(
            esc("del\x7f c1\u{9b}\u{80}\u{9f} \u{a0}"),
            "del\\x7f c1\\x9b\\x80\\x9f \u{a0}"
        );
        // Every code point up to U+00FF: escaped exactly when a control.
        for c in (0u32..=0xff).filter_map(char::from_u32) {
            let shown = esc(c.encode_utf8(&mut [0; 4])).into_owned();
            let control = (c < ' ' && c != '\t') || ('\u{7f}'..='\u{9f}').contains(&c);
            assert_eq!(shown.starts_with("\\x"), control, "{c:?}");
        }
    }

    #[test]
    fn json_for_people_escapes_del_and_c1_as_json() {
        let v = json!({"s": "\x1b]0;t\x07 \u{7f} \u{9b}"});
        let pretty = serde_json::to_string_pretty(&v).unwrap();
        let shown = esc_json(&pretty);
        assert!(
            !shown.chars().any(|c| is_control(c) && c != '\n'),
            "{shown}"
        );
        assert_eq!(serde_json::from_str::<Value>(&shown).unwrap(), v);
    }
}
