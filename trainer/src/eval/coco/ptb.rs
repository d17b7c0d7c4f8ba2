//! The caption tokenization COCOEvalCap applies before every metric:
//! pycocoevalcap's `PTBTokenizer` runs Stanford CoreNLP 3.4.1's PTBTokenizer
//! with `-preserveLines -lowerCase` (one caption per line, newlines inside a
//! caption replaced by spaces), then drops every token that is one of
//! [`PUNCTUATION_TOKENS`] and joins the rest with single spaces.
//!
//! This is a re-implementation of the Stanford lexer's rules for the text that
//! captions are made of (checked against the jar by `tests/eval_coco.rs`):
//! words of any case, digits and numbers (`3.5`, `1,000`, `10:30`),
//! contractions (`n't 's 're 've 'm 'll 'd`, `cannot`, `gonna`, …),
//! sentence punctuation (`. , ; : ! ? ...`, runs such as `!!!` and `?!`,
//! which Stanford keeps as tokens), double and single quotes, brackets
//! (lowercased escapes such as `-lrb-`, which survive the filter because it
//! lists the upper-case spellings), dashes and hyphenated words, `$ % # &`
//! and the usual abbreviations (`mr.`, `st.`, `etc.`, `u.s.`, `a.`).
//! Rarer constructs of the Stanford lexer (URLs, e-mail addresses, SGML,
//! emoticons, unicode quotes and dashes) are not modelled; for such input the
//! pycocoevalcap script (`scripts/coco_caption_eval.py`) is the reference.

/// Tokens pycocoevalcap removes after tokenization (exact, case-sensitive).
pub const PUNCTUATION_TOKENS: [&str; 17] =
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"];

/// Captions as COCOEvalCap scores them: PTB tokens, lowercased, punctuation
/// tokens removed, joined by single spaces. pycocoevalcap tokenizes all the
/// references (or all the predictions) of an evaluation as one file, one
/// caption per line, and the lexer looks across lines (a one-letter word's
/// period splits off before a capital that starts the next caption), so the
/// captions come in together, in the reference's order.
pub fn tokenize_captions<S: AsRef<str>>(captions: &[S]) -> Vec<String> {
    let chunks: Vec<Vec<&str>> = captions.iter().map(|c| chunks_of(c.as_ref()).collect()).collect();
    (0..captions.len())
        .map(|i| {
            // What follows the caption's last chunk: the first chunk of the next
            // non-empty caption, unless that caption starts with a space.
            let next_caption = captions[i + 1..]
                .iter()
                .map(AsRef::as_ref)
                .find(|c| !c.is_empty())
                .filter(|c| !c.starts_with(is_java_space));
            let after_last = next_caption.and_then(|c| chunks_of(c).next());
            let mut tokens = Vec::new();
            for (k, chunk) in chunks[i].iter().enumerate() {
                let next = chunks[i].get(k + 1).copied().or(after_last);
                split_chunk(chunk, next.is_some_and(starts_sentence), &mut tokens);
            }
            let kept: Vec<String> = tokens
                .into_iter()
                .map(|t| t.to_lowercase())
                .filter(|t| !PUNCTUATION_TOKENS.contains(&t.as_str()))
                .collect();
            kept.join(" ")
        })
        .collect()
}

/// One caption alone (as the first and last line of its file).
pub fn tokenize_caption(caption: &str) -> String {
    tokenize_captions(&[caption]).remove(0)
}

/// Whitespace-separated chunks; pycocoevalcap turns a caption's newlines into spaces.
fn chunks_of(caption: &str) -> impl Iterator<Item = &str> {
    caption.split(is_java_space).filter(|c| !c.is_empty())
}

/// Capitalised words before which the lexer splits a one-letter word's
/// period off as a sentence end (found by probing the 3.4.1 jar; `I`, `It`,
/// `On`, `His`, `And`, nouns and numbers do not count).
const SENTENCE_STARTS: &[&str] = &[
    "a", "an", "the", "he", "she", "they", "we", "there", "this", "in", "her", "one", "that", "these", "what", "when",
    "if", "but", "as", "at", "some", "many", "then", "so", "our", "you", "here", "however", "while", "after", "since",
    "their",
];

/// Whether a chunk starts a sentence for the lexer's one-letter rule: one of
/// [`SENTENCE_STARTS`], capitalised.
fn starts_sentence(chunk: &str) -> bool {
    let word: String = chunk.chars().take_while(|c| c.is_ascii_alphabetic()).collect();
    word.starts_with(|c: char| c.is_ascii_uppercase()) && SENTENCE_STARTS.contains(&word.to_lowercase().as_str())
}

fn is_java_space(c: char) -> bool {
    c.is_whitespace() || c == '\u{a0}'
}

/// Titles, months and other abbreviations whose final period the Stanford
/// lexer keeps on the word (matched case-insensitively).
const ABBREVIATIONS: &[&str] = &[
    "mr", "mrs", "ms", "dr", "drs", "prof", "st", "mt", "jr", "sr", "sen", "rep", "gov", "gen", "col", "lt", "capt",
    "sgt", "rev", "hon", "pres", "ave", "inc", "co", "corp", "ltd", "bros", "vs", "etc", "jan", "feb", "mar", "apr",
    "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec",
];

/// Whether `word` followed by a period is one token for the lexer: an
/// abbreviation of the list, letters separated by periods (`u.s`, `e.g`,
/// `a.m`), or one letter (`a.`, `A.`) unless a sentence starts after it.
fn keeps_period(word: &str, sentence_follows: bool) -> bool {
    let lower = word.to_lowercase();
    if ABBREVIATIONS.contains(&lower.as_str()) {
        return true;
    }
    let parts: Vec<&str> = word.split('.').collect();
    let letters = parts.iter().all(|p| p.chars().count() == 1 && p.chars().all(char::is_alphabetic));
    letters && (parts.len() > 1 || !sentence_follows)
}

/// Splits one whitespace-free chunk into tokens (original case).
fn split_chunk(chunk: &str, sentence_follows: bool, out: &mut Vec<String>) {
    let chars: Vec<char> = chunk.chars().collect();
    let (mut start, mut end) = (0, chars.len());
    // Opening punctuation.
    while start < end {
        let (token, width) = match chars[start] {
            '"' => ("``".to_string(), 1),
            '\'' | '`' => ("`".to_string(), 1),
            '(' => ("-LRB-".to_string(), 1),
            '[' => ("-LSB-".to_string(), 1),
            '{' => ("-LCB-".to_string(), 1),
            '$' | '#' | ',' | ';' | ':' | '%' | '&' => (chars[start].to_string(), 1),
            '-' | '.' | '!' | '?' => run_token(&chars[start..end]),
            _ => break,
        };
        out.push(token);
        start += width;
    }
    // Closing punctuation, collected backwards.
    let mut closing = Vec::new();
    while start < end {
        let c = chars[end - 1];
        let (token, width) = match c {
            '"' => ("''".to_string(), 1),
            '\'' if end - start > 1 && !is_contraction_end(&chars[start..end]) => ("'".to_string(), 1),
            ')' => ("-RRB-".to_string(), 1),
            ']' => ("-RSB-".to_string(), 1),
            '}' => ("-RCB-".to_string(), 1),
            ',' | ';' | ':' | '%' | '$' | '#' | '&' => (c.to_string(), 1),
            '!' | '?' | '-' => {
                let mut s = end - 1;
                while s > start && chars[s - 1] == c || (s > start && "!?".contains(c) && "!?".contains(chars[s - 1])) {
                    s -= 1;
                }
                run_token(&chars[s..end])
            }
            '.' => {
                let mut s = end - 1;
                while s > start && chars[s - 1] == '.' {
                    s -= 1;
                }
                if s > start && keeps_period(&chars[start..s].iter().collect::<String>(), sentence_follows) {
                    // The word takes the first period (`A...` is `A.` then periods).
                    closing.extend(std::iter::repeat_n(".".to_string(), end - s - 1));
                    end = s + 1;
                    break;
                } else if end - s >= 3 {
                    ("...".to_string(), end - s)
                } else {
                    (".".to_string(), 1)
                }
            }
            _ => break,
        };
        closing.push(token);
        end -= width;
    }
    split_core(&chars[start..end], out);
    out.extend(closing.into_iter().rev());
}

/// A run of the same mark at the start of `chars` as one token: `--`, `...`,
/// `!!!`, `?!`; a single period or hyphen stands alone.
fn run_token(chars: &[char]) -> (String, usize) {
    let first = chars[0];
    let same = |c: char| if "!?".contains(first) { "!?".contains(c) } else { c == first };
    let n = chars.iter().take_while(|&&c| same(c)).count();
    match first {
        '.' if n >= 3 => ("...".to_string(), n),
        '.' => (".".to_string(), 1),
        '-' if n >= 2 => ("--".to_string(), 2),
        _ => (chars[..n].iter().collect(), n),
    }
}

/// Whether a trailing apostrophe belongs to the word (`ol'`, not `dogs'`).
fn is_contraction_end(chars: &[char]) -> bool {
    let word: String = chars[..chars.len() - 1].iter().collect::<String>().to_lowercase();
    word == "ol" || word == "y"
}

/// Splits the inside of a chunk at punctuation the lexer separates, then
/// each piece at its contraction.
fn split_core(chars: &[char], out: &mut Vec<String>) {
    let mut piece = String::new();
    let digit_at = |i: usize| chars.get(i).is_some_and(|c| c.is_ascii_digit());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let separate: Option<&str> = match c {
            ',' | ':' if !(i > 0 && digit_at(i - 1) && digit_at(i + 1)) => Some(if c == ',' { "," } else { ":" }),
            ';' => Some(";"),
            '"' => Some("``"),
            '(' => Some("-LRB-"),
            ')' => Some("-RRB-"),
            '[' => Some("-LSB-"),
            ']' => Some("-RSB-"),
            '{' => Some("-LCB-"),
            '}' => Some("-RCB-"),
            '-' if chars.get(i + 1) == Some(&'-') => Some("--"),
            '+' | '=' | '|' | '~' | '^' | '\\' | '*' | '%' | '$' => None,
            _ => {
                piece.push(c);
                i += 1;
                continue;
            }
        };
        flush_word(&mut piece, out);
        match separate {
            Some(token) => {
                out.push(token.to_string());
                i += if token == "--" { 2 } else { 1 };
            }
            None => {
                out.push(c.to_string());
                i += 1;
            }
        }
    }
    flush_word(&mut piece, out);
}

const CONTRACTIONS: [&str; 6] = ["'s", "'re", "'ve", "'m", "'ll", "'d"];
/// Words the lexer cuts in two (`gonna` → `gon na`), with the length of the first part.
const SPLIT_WORDS: [(&str, usize); 6] =
    [("cannot", 3), ("gonna", 3), ("gotta", 3), ("wanna", 3), ("lemme", 3), ("gimme", 3)];

fn flush_word(piece: &mut String, out: &mut Vec<String>) {
    if piece.is_empty() {
        return;
    }
    let word = std::mem::take(piece);
    let lower = word.to_lowercase();
    let cut = if lower.ends_with("n't") && lower.len() > 3 {
        Some(word.len() - 3)
    } else if let Some(suffix) = CONTRACTIONS.iter().find(|s| lower.ends_with(*s) && lower.len() > s.len()) {
        Some(word.len() - suffix.len())
    } else {
        SPLIT_WORDS.iter().find(|(w, _)| *w == lower).map(|&(_, n)| n)
    };
    match cut.filter(|&n| word.is_char_boundary(n)) {
        Some(n) => {
            out.push(word[..n].to_string());
            out.push(word[n..].to_string());
        }
        None => out.push(word),
    }
}

#[cfg(test)]
mod tests {
    use super::{tokenize_caption, tokenize_captions};

    #[test]
    fn matches_the_stanford_lexer_on_caption_punctuation() {
        // Expected strings from the Stanford CoreNLP 3.4.1 jar with pycocoevalcap's filter.
        let cases = [
            ("A man riding a wave on top of a surfboard.", "a man riding a wave on top of a surfboard"),
            ("Don't you think it's a dog's toy?", "do n't you think it 's a dog 's toy"),
            ("\"Quoted\" text and 'single quotes'", "quoted text and single quotes"),
            ("A t-shirt -- with a dash - and... ellipsis", "a t-shirt with a dash and ellipsis"),
            ("(parens) [brackets] {braces}", "-lrb- parens -rrb- -lsb- brackets -rsb- -lcb- braces -rcb-"),
            ("$5.00 and 3.5% of 1,000", "$ 5.00 and 3.5 % of 1,000"),
            ("Two dogs!!! Are they?! Yes: indeed.", "two dogs !!! are they ?! yes indeed"),
            ("Mr. Smith on St. Mark etc. ok.", "mr. smith on st. mark etc. ok"),
            ("dog,cat dog.. a cannot gonna", "dog cat dog a can not gon na"),
            ("the a. The dog", "the a the dog"),
            ("A. B. c. d.", "a. b. c. d."),
            ("a. Two dogs", "a. two dogs"),
            ("...", ""),
            ("", ""),
        ];
        for (input, want) in cases {
            assert_eq!(tokenize_caption(input), want, "{input:?}");
        }
    }

    #[test]
    fn a_capital_on_the_next_line_ends_the_sentence() {
        let lines = ["the a.", "The dog", "the a.", "the dog", "the I.", "", "She", "a b.", " The", "x a.", "Pizza"];
        let want = ["the a", "the dog", "the a.", "the dog", "the i", "", "she", "a b.", "the", "x a.", "pizza"];
        assert_eq!(tokenize_captions(&lines), want);
    }
}
