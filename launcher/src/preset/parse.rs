//! The preset language: the part of shell that assigns variables, read by
//! elfin itself. A preset is valid shell (`bash -n` accepts it) but is never
//! run, so a preset from anywhere cannot execute anything.

use std::collections::HashMap;

/// What a preset may contain; every parse error repeats it.
pub const ALLOWED: &str = "a preset may contain only comments, `NAME=value` and \
`export NAME=value` lines, and `source FILE`; values may be quoted ('...' or \"...\"), \
use $NAME or ${NAME} of earlier names or of the environment, and go on over lines \
after a trailing backslash";

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{file}:{line}: {message}\n  ({ALLOWED}; elfin reads presets, it never runs them)")]
pub struct ParseError {
    pub file: String,
    pub line: usize,
    pub message: String,
}

/// One resolved variable and where its value was last assigned.
#[derive(Debug, Clone, PartialEq)]
pub struct Variable {
    pub name: String,
    pub value: String,
    pub exported: bool,
    pub file: String,
    pub line: usize,
    /// The names its value was made from (`$NAME` in its last assignment).
    pub uses: Vec<String>,
    /// The names that earlier assignments, overwritten since, were made from.
    pub overwritten_uses: Vec<String>,
}

/// The text of one preset file, with the names used in messages and for
/// finding `source` cycles.
#[derive(Debug, Clone)]
pub struct PresetFile {
    /// How messages name the file (a path, or `built-in NAME.sh`).
    pub display: String,
    /// Identity for cycle detection (a canonical path or `builtin:NAME`).
    pub key: String,
    pub text: String,
}

/// Finds the file a `source PATH` line names, relative to the file it is in.
pub trait SourceLoader {
    fn load(&self, path: &str, from: &PresetFile) -> Result<PresetFile, String>;
}

/// Evaluates preset files in order, as the shell would assign their variables.
pub struct Evaluator<'a> {
    vars: Vec<Variable>,
    index: HashMap<String, usize>,
    /// `--set` values: an assignment to one of these names keeps the pinned value.
    pinned: &'a HashMap<String, String>,
    env: &'a dyn Fn(&str) -> Option<String>,
    loader: &'a dyn SourceLoader,
    stack: Vec<String>,
}

const MAX_SOURCE_DEPTH: usize = 16;

impl<'a> Evaluator<'a> {
    pub fn new(
        env: &'a dyn Fn(&str) -> Option<String>,
        loader: &'a dyn SourceLoader,
        pinned: &'a HashMap<String, String>,
    ) -> Self {
        Evaluator { vars: Vec::new(), index: HashMap::new(), pinned, env, loader, stack: Vec::new() }
    }

    /// A variable that exists before the first line (e.g. `DATA_ROOT`).
    pub fn predefine(&mut self, name: &str, value: &str) {
        let text = self.pinned.get(name).map_or(value, String::as_str).to_string();
        let word = Word { assign: None, text, literal: true, glob: false, line: 0, uses: Vec::new() };
        self.set(name, word, false, "(elfin)");
    }

    pub fn eval(&mut self, file: &PresetFile) -> Result<(), ParseError> {
        self.stack.push(file.key.clone());
        let mut lx = Lexer::new(&file.text, &file.display);
        loop {
            lx.skip_blanks();
            match lx.peek() {
                None => break,
                Some('\n') => lx.bump(),
                Some('#') => lx.skip_comment(),
                Some(_) => self.statement(&mut lx, file)?,
            }
        }
        self.stack.pop();
        Ok(())
    }

    pub fn finish(self) -> Vec<Variable> {
        self.vars
    }

    fn lookup(&self, name: &str) -> Option<String> {
        if let Some(v) = self.pinned.get(name).filter(|_| self.index.contains_key(name)) {
            return Some(v.clone());
        }
        match self.index.get(name) {
            Some(&i) => Some(self.vars[i].value.clone()),
            None => (self.env)(name),
        }
    }

    fn set(&mut self, name: &str, word: Word, exported: bool, file: &str) {
        let value = self.pinned.get(name).cloned().unwrap_or(word.text);
        match self.index.get(name) {
            Some(&i) => {
                let v = &mut self.vars[i];
                let earlier = std::mem::replace(&mut v.uses, word.uses);
                v.overwritten_uses.extend(earlier);
                v.value = value;
                v.exported |= exported;
                v.file = file.to_string();
                v.line = word.line;
            }
            None => {
                self.index.insert(name.to_string(), self.vars.len());
                self.vars.push(Variable {
                    name: name.to_string(),
                    value,
                    exported,
                    file: file.to_string(),
                    line: word.line,
                    uses: word.uses,
                    overwritten_uses: Vec::new(),
                });
            }
        }
    }

    /// One line (after continuations): assignments, `export ...` or `source FILE`.
    fn statement(&mut self, lx: &mut Lexer, file: &PresetFile) -> Result<(), ParseError> {
        let first = lx.word(&|n| self.lookup(n))?;
        if let Some(name) = first.assign.clone() {
            self.set(&name, first, false, &file.display);
            while let Some(w) = lx.next_word(&|n| self.lookup(n))? {
                let Some(name) = w.assign.clone() else {
                    return Err(lx.error(w.line, format!("`{}` after an assignment would run a command", w.text)));
                };
                self.set(&name, w, false, &file.display);
            }
            return Ok(());
        }
        let keyword = if first.literal { first.text.as_str() } else { "" };
        match keyword {
            "export" => {
                let mut any = false;
                while let Some(w) = lx.next_word(&|n| self.lookup(n))? {
                    any = true;
                    match w.assign.clone() {
                        Some(name) => self.set(&name, w, true, &file.display),
                        None if w.literal && is_name(&w.text) => self.export_existing(&w.text, lx, w.line)?,
                        None => {
                            return Err(
                                lx.error(w.line, format!("`export {}`: export takes NAME or NAME=value", w.text))
                            )
                        }
                    }
                }
                if !any {
                    return Err(lx.error(first.line, "`export` needs NAME=value".into()));
                }
                Ok(())
            }
            "source" | "." => {
                let Some(path) = lx.next_word(&|n| self.lookup(n))? else {
                    return Err(lx.error(first.line, format!("`{keyword}` needs the file to read")));
                };
                if path.assign.is_some() || path.glob {
                    return Err(
                        lx.error(path.line, format!("`{keyword} {}`: name one file, without wildcards", path.text))
                    );
                }
                if let Some(extra) = lx.next_word(&|n| self.lookup(n))? {
                    return Err(lx.error(
                        extra.line,
                        format!("`{keyword}` takes one file; `{}` would be its arguments", extra.text),
                    ));
                }
                let sourced = self
                    .loader
                    .load(&path.text, file)
                    .map_err(|why| lx.error(path.line, format!("cannot `{keyword} {}`: {why}", path.text)))?;
                if self.stack.contains(&sourced.key) || self.stack.len() >= MAX_SOURCE_DEPTH {
                    let mut chain = self.stack.clone();
                    chain.push(sourced.key);
                    return Err(
                        lx.error(path.line, format!("`{keyword}` loops back on itself: {}", chain.join(" -> ")))
                    );
                }
                self.eval(&sourced)
            }
            "for" | "while" | "until" | "select" => {
                Err(lx.error(first.line, format!("loops (`{keyword}`) are not allowed; write each value once")))
            }
            "if" | "case" | "function" | "[[" | "[" | "{" => {
                Err(lx.error(first.line, format!("`{keyword}`: conditionals and functions are not allowed")))
            }
            _ => Err(lx.error(first.line, format!("`{}` is a command", first.text))),
        }
    }

    fn export_existing(&mut self, name: &str, lx: &Lexer, line: usize) -> Result<(), ParseError> {
        match self.index.get(name) {
            Some(&i) => {
                self.vars[i].exported = true;
                Ok(())
            }
            // Already exported by the environment: nothing to do.
            None if (self.env)(name).is_some() => Ok(()),
            None => Err(lx.error(line, format!("`export {name}`: {name} is not set"))),
        }
    }
}

fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

/// A shell word after quote removal and expansion.
struct Word {
    /// `Some(NAME)` when the word is `NAME=value` (then `text` is the value).
    assign: Option<String>,
    text: String,
    /// No quotes, escapes or expansions: the word can be a keyword.
    literal: bool,
    /// Unquoted `*`, `?`, `[` or `{`: the shell would expand it in a command word.
    glob: bool,
    line: usize,
    /// The names expanded in it.
    uses: Vec<String>,
}

struct Lexer<'t> {
    chars: Vec<char>,
    pos: usize,
    line: usize,
    file: &'t str,
    /// The names expanded in the word being read.
    uses: Vec<String>,
}

impl<'t> Lexer<'t> {
    fn new(text: &str, file: &'t str) -> Self {
        Lexer { chars: text.chars().collect(), pos: 0, line: 1, file, uses: Vec::new() }
    }

    fn error(&self, line: usize, message: String) -> ParseError {
        ParseError { file: self.file.to_string(), line, message }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn peek_at(&self, ahead: usize) -> Option<char> {
        self.chars.get(self.pos + ahead).copied()
    }

    fn bump(&mut self) {
        if self.peek() == Some('\n') {
            self.line += 1;
        }
        self.pos += 1;
    }

    /// Spaces, tabs and backslash-newline continuations.
    fn skip_blanks(&mut self) {
        loop {
            match self.peek() {
                Some(' ' | '\t' | '\r') => self.bump(),
                Some('\\') if self.peek_at(1) == Some('\n') => {
                    self.bump();
                    self.bump();
                }
                _ => return,
            }
        }
    }

    fn skip_comment(&mut self) {
        while !matches!(self.peek(), None | Some('\n')) {
            self.bump();
        }
    }

    /// The next word of the current line, or `None` at its end.
    fn next_word(&mut self, lookup: &dyn Fn(&str) -> Option<String>) -> Result<Option<Word>, ParseError> {
        self.skip_blanks();
        match self.peek() {
            None | Some('\n') => Ok(None),
            Some('#') => {
                self.skip_comment();
                Ok(None)
            }
            Some(_) => self.word(lookup).map(Some),
        }
    }

    fn word(&mut self, lookup: &dyn Fn(&str) -> Option<String>) -> Result<Word, ParseError> {
        let line = self.line;
        let assign = self.assignment_prefix();
        let mut w = Word { assign, text: String::new(), literal: true, glob: false, line, uses: Vec::new() };
        let used_before = self.uses.len();
        if w.assign.is_some() && self.peek() == Some('~') {
            return Err(self.error(self.line, "`~` is not expanded by elfin; write $HOME".into()));
        }
        while let Some(c) = self.peek() {
            match c {
                ' ' | '\t' | '\r' | '\n' => break,
                '\'' => {
                    w.literal = false;
                    self.single_quoted(&mut w.text)?;
                }
                '"' => {
                    w.literal = false;
                    self.double_quoted(&mut w.text, lookup)?;
                }
                '\\' => {
                    w.literal = false;
                    self.bump();
                    match self.peek() {
                        Some('\n') => self.bump(),
                        Some(c) => {
                            w.text.push(c);
                            self.bump();
                        }
                        None => w.text.push('\\'),
                    }
                }
                '$' => {
                    w.literal = false;
                    self.expansion(&mut w.text, lookup, false)?;
                }
                '`' => return Err(self.error(self.line, "command substitution (`...`) is not allowed".into())),
                ';' | '&' | '|' | '<' | '>' | '(' | ')' => {
                    return Err(self.error(
                        self.line,
                        format!(
                        "`{c}` is shell syntax for lists, pipes, redirections or subshells, which presets cannot use"
                    ),
                    ))
                }
                _ => {
                    w.glob |= matches!(c, '*' | '?' | '[' | '{');
                    w.text.push(c);
                    self.bump();
                }
            }
        }
        w.uses = self.uses.split_off(used_before);
        Ok(w)
    }

    /// Consumes `NAME=` at the start of a word, as the shell recognises an assignment.
    fn assignment_prefix(&mut self) -> Option<String> {
        let mut end = self.pos;
        while let Some(&c) = self.chars.get(end) {
            let ok = c == '_' || c.is_ascii_alphabetic() || (end > self.pos && c.is_ascii_digit());
            if !ok {
                break;
            }
            end += 1;
        }
        if end == self.pos || self.chars.get(end) != Some(&'=') {
            return None;
        }
        let name: String = self.chars[self.pos..end].iter().collect();
        self.pos = end + 1;
        Some(name)
    }

    fn single_quoted(&mut self, out: &mut String) -> Result<(), ParseError> {
        let opened = self.line;
        self.bump();
        loop {
            match self.peek() {
                None => return Err(self.error(opened, "unterminated single quote".into())),
                Some('\'') => {
                    self.bump();
                    return Ok(());
                }
                Some(c) => {
                    out.push(c);
                    self.bump();
                }
            }
        }
    }

    fn double_quoted(&mut self, out: &mut String, lookup: &dyn Fn(&str) -> Option<String>) -> Result<(), ParseError> {
        let opened = self.line;
        self.bump();
        loop {
            match self.peek() {
                None => return Err(self.error(opened, "unterminated double quote".into())),
                Some('"') => {
                    self.bump();
                    return Ok(());
                }
                Some('\\') => {
                    self.bump();
                    match self.peek() {
                        Some('\n') => self.bump(),
                        Some(c @ ('$' | '`' | '"' | '\\')) => {
                            out.push(c);
                            self.bump();
                        }
                        _ => out.push('\\'),
                    }
                }
                Some('$') => self.expansion(out, lookup, true)?,
                Some('`') => return Err(self.error(self.line, "command substitution (`...`) is not allowed".into())),
                Some(c) => {
                    out.push(c);
                    self.bump();
                }
            }
        }
    }

    /// `$NAME` or `${NAME}`; a `$` that starts nothing stays a literal `$`, as in shell.
    fn expansion(
        &mut self,
        out: &mut String,
        lookup: &dyn Fn(&str) -> Option<String>,
        in_double_quotes: bool,
    ) -> Result<(), ParseError> {
        let line = self.line;
        self.bump();
        let name = match self.peek() {
            Some('(') => {
                let what =
                    if self.peek_at(1) == Some('(') { "arithmetic $((...))" } else { "command substitution $(...)" };
                return Err(self.error(line, format!("{what} is not allowed")));
            }
            Some('{') => {
                self.bump();
                let start = self.pos;
                while matches!(self.peek(), Some(c) if c == '_' || c.is_ascii_alphanumeric()) {
                    self.bump();
                }
                let name: String = self.chars[start..self.pos].iter().collect();
                if self.peek() != Some('}') || !is_name(&name) {
                    return Err(self.error(
                        line,
                        "only plain ${NAME} is allowed (no defaults, lengths, patterns or substrings)".into(),
                    ));
                }
                self.bump();
                name
            }
            Some(c) if c == '_' || c.is_ascii_alphabetic() => {
                let start = self.pos;
                while matches!(self.peek(), Some(c) if c == '_' || c.is_ascii_alphanumeric()) {
                    self.bump();
                }
                self.chars[start..self.pos].iter().collect()
            }
            Some(c) if c.is_ascii_digit() || "@*#?$!-".contains(c) => {
                return Err(self.error(line, format!("the special parameter `${c}` is not allowed")));
            }
            Some('\'' | '"') if !in_double_quotes => {
                return Err(self.error(line, "`$'...'` and `$\"...\"` quoting are not allowed".into()));
            }
            _ => {
                out.push('$');
                return Ok(());
            }
        };
        self.uses.push(name.clone());
        match lookup(&name) {
            Some(v) => {
                out.push_str(&v);
                Ok(())
            }
            None => {
                Err(self
                    .error(line, format!("${name} is not set, neither earlier in the preset nor in the environment")))
            }
        }
    }
}
