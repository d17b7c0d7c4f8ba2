//! The preset language: what it reads like the shell, and every construct it refuses, with its line.

use elfin_launcher::preset::parse::{Evaluator, ParseError, PresetFile, SourceLoader, Variable, ALLOWED};
use std::collections::HashMap;
use std::process::Command;

/// In-memory preset files, `source`d by name.
struct Files(HashMap<&'static str, &'static str>);

impl SourceLoader for Files {
    fn load(&self, path: &str, _from: &PresetFile) -> Result<PresetFile, String> {
        let text = self.0.get(path).ok_or_else(|| "no such file".to_string())?;
        Ok(PresetFile { display: path.to_string(), key: path.to_string(), text: text.to_string() })
    }
}

fn env(name: &str) -> Option<String> {
    match name {
        "HOME" => Some("/home/me".into()),
        "EMPTY" => Some(String::new()),
        _ => None,
    }
}

fn eval_with(files: &[(&'static str, &'static str)], pins: &[(&str, &str)]) -> Result<Vec<Variable>, ParseError> {
    let files = Files(files.iter().cloned().collect());
    let pinned: HashMap<String, String> = pins.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let mut ev = Evaluator::new(&env, &files, &pinned);
    ev.predefine("DATA_ROOT", "/data");
    let main =
        files.load("main.sh", &PresetFile { display: String::new(), key: String::new(), text: String::new() }).unwrap();
    ev.eval(&main)?;
    Ok(ev.finish())
}

fn eval(text: &'static str) -> Result<Vec<Variable>, ParseError> {
    eval_with(&[("main.sh", text)], &[])
}

fn values(vars: &[Variable]) -> Vec<(String, String)> {
    vars.iter().filter(|v| v.name != "DATA_ROOT").map(|v| (v.name.clone(), v.value.clone())).collect()
}

fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    expected.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// What bash assigns for the same text (the names listed), to hold the parser to the shell.
fn bash_values(text: &str, names: &[&str]) -> Vec<(String, String)> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("main.sh"), text).unwrap();
    let printer: String = names.iter().map(|n| format!("printf '%s\\0' \"${n}\"; ")).collect();
    let script = format!("DATA_ROOT=/data; HOME=/home/me; EMPTY=; source ./main.sh; {printer}");
    let out = Command::new("bash").arg("-c").arg(script).current_dir(dir.path()).env_clear().output().unwrap();
    assert!(out.status.success(), "bash: {}", String::from_utf8_lossy(&out.stderr));
    let fields: Vec<String> = out.stdout.split(|&b| b == 0).map(|f| String::from_utf8_lossy(f).to_string()).collect();
    names.iter().zip(fields).map(|(n, v)| (n.to_string(), v)).collect()
}

const QUOTING: &str = r#"# a comment line
plain=value   # trailing comment
single='two  words $plain "kept"'
double="x $plain ${plain}y \$literal \"q\" back\\slash a\b"
mixed=pre'mid dle'"post"$plain
empty=
empty_quoted=""
dollar_alone="cost 5$" tail=$
path=${DATA_ROOT}/caption_data
json='{"beam":5,"max_len_b":16}'
tuple='(0.9,0.999)'
braces={10,}
star=*.tsv
hashy=a#b
fromenv=$HOME/x$EMPTY
"#;

#[test]
fn quotes_and_expansion_read_as_bash_reads_them() {
    let vars = eval(QUOTING).unwrap();
    let names: Vec<&str> = vars.iter().filter(|v| v.name != "DATA_ROOT").map(|v| v.name.as_str()).collect();
    assert_eq!(values(&vars), bash_values(QUOTING, &names));
    let get = |n: &str| vars.iter().find(|v| v.name == n).unwrap().value.clone();
    assert_eq!(get("single"), r#"two  words $plain "kept""#);
    assert_eq!(get("double"), r#"x value valuey $literal "q" back\slash a\b"#);
    assert_eq!(get("mixed"), "premid dlepostvalue");
    assert_eq!(get("path"), "/data/caption_data");
    assert_eq!(get("braces"), "{10,}");
    assert_eq!(get("hashy"), "a#b");
}

const CONTINUATION: &str = "long=one\\\ntwo\nexport \\\n  A=1 \\\n  B=\"x\\\ny\"\nsq='keep\\\nthis'\nafter=$A$B\n";

#[test]
fn backslash_newline_continues_a_line_except_in_single_quotes() {
    let vars = eval(CONTINUATION).unwrap();
    assert_eq!(values(&vars), bash_values(CONTINUATION, &["long", "A", "B", "sq", "after"]));
    assert_eq!(
        values(&vars),
        pairs(&[("long", "onetwo"), ("A", "1"), ("B", "xy"), ("sq", "keep\\\nthis"), ("after", "1xy")])
    );
    let line = |n: &str| vars.iter().find(|v| v.name == n).unwrap().line;
    assert_eq!((line("long"), line("B"), line("after")), (1, 5, 9));
}

#[test]
fn export_marks_variables_for_the_ranks() {
    let vars = eval("a=1\nexport b=2\nexport a\nc=3\n").unwrap();
    let exported: Vec<&str> = vars.iter().filter(|v| v.exported).map(|v| v.name.as_str()).collect();
    assert_eq!(exported, ["a", "b"]);
    assert!(eval("export HOME\n").is_ok(), "exporting an environment variable is a no-op");
}

#[test]
fn source_builds_on_another_preset_and_later_lines_win() {
    let files = [
        ("base.sh", "lr=1e-5\nsave=./out/${lr}\nexport PORT=1\n"),
        ("main.sh", "# mine\nsource base.sh\nlr=3e-5\n. base2.sh\n"),
        ("base2.sh", "derived=$lr\n"),
    ];
    let vars = eval_with(&files, &[]).unwrap();
    assert_eq!(values(&vars), pairs(&[("lr", "3e-5"), ("save", "./out/1e-5"), ("PORT", "1"), ("derived", "3e-5")]));
    let lr = vars.iter().find(|v| v.name == "lr").unwrap();
    assert_eq!((lr.file.as_str(), lr.line), ("main.sh", 3));
}

#[test]
fn a_pinned_value_replaces_every_assignment_and_what_follows_from_it() {
    let files = [("main.sh", "lr=1e-5\nsave=./out/${lr}\nlr=2e-5\n")];
    let vars = eval_with(&files, &[("lr", "9")]).unwrap();
    assert_eq!(values(&vars), pairs(&[("lr", "9"), ("save", "./out/9")]));
}

/// `(text, line, words the message must hold)` for every refused construct.
const REFUSED: &[(&str, usize, &str)] = &[
    ("a=1\n\necho hi\n", 3, "`echo` is a command"),
    ("a=1\nfor x in 1 2; do\n", 2, "loops"),
    ("while true\n", 1, "loops"),
    ("if [ -n x ]; then a=1; fi\n", 1, "conditionals"),
    ("a=$(date)\n", 1, "command substitution $(...)"),
    ("a=\"$(date)\"\n", 1, "command substitution $(...)"),
    ("b=1\na=`date`\n", 2, "command substitution (`...`)"),
    ("a=$((1+2))\n", 1, "arithmetic"),
    ("a=${HOME:-/x}\n", 1, "only plain ${NAME}"),
    ("a=${#HOME}\n", 1, "only plain ${NAME}"),
    ("a=${HOME\n", 1, "only plain ${NAME}"),
    ("a=$1\n", 1, "special parameter `$1`"),
    ("a=\"$@\"\n", 1, "special parameter `$@`"),
    ("a=1; b=2\n", 1, "`;`"),
    ("a=1 | cat\n", 1, "`|`"),
    ("a=1 > out\n", 1, "`>`"),
    ("a=1 &\n", 1, "`&`"),
    ("a=(1 2)\n", 1, "`(`"),
    ("a=1\nb='open\n\n", 2, "unterminated single quote"),
    ("a=\"open\\\"\n", 1, "unterminated double quote"),
    ("a=1\nb=$nope\n", 2, "$nope is not set"),
    ("a=\\\n${nope}\n", 2, "$nope is not set"),
    ("a=~/x\n", 1, "$HOME"),
    ("export\n", 1, "`export` needs"),
    ("export -n a\n", 1, "export takes NAME"),
    ("export nope\n", 1, "nope is not set"),
    ("a=1 make\n", 1, "would run a command"),
    ("source\n", 1, "needs the file"),
    ("source missing.sh\n", 1, "cannot `source missing.sh`: no such file"),
    ("source a.sh b\n", 1, "takes one file"),
    ("source *.sh\n", 1, "without wildcards"),
    ("a=$'x'\n", 1, "`$'...'`"),
];

#[test]
fn every_refused_construct_names_file_line_and_what_is_allowed() {
    for &(text, line, words) in REFUSED {
        let err = eval(text).expect_err(text);
        assert_eq!((err.file.as_str(), err.line), ("main.sh", line), "{text:?}: {err}");
        let shown = err.to_string();
        assert!(err.message.contains(words), "{text:?}: {shown}");
        assert!(shown.starts_with(&format!("main.sh:{line}: ")) && shown.contains(ALLOWED), "{shown}");
    }
}

#[test]
fn an_error_in_a_sourced_file_names_that_file_and_a_cycle_is_refused() {
    let err = eval_with(&[("main.sh", "a=1\nsource bad.sh\n"), ("bad.sh", "\n\nrm -rf /\n")], &[]).unwrap_err();
    assert_eq!((err.file.as_str(), err.line), ("bad.sh", 3), "{err}");
    let err = eval_with(&[("main.sh", "source b.sh\n"), ("b.sh", "x=1\nsource main.sh\n")], &[]).unwrap_err();
    assert_eq!((err.file.as_str(), err.line), ("b.sh", 2), "{err}");
    assert!(err.message.contains("loops back"), "{err}");
}
