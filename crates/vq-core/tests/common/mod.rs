//! Helpers of the tests that compare with the `vector-quantize-pytorch` package: whether it
//! imports, and one Python process that reads blocks of numbers from stdin.

use std::io::Write;
use std::process::{Command, Stdio};

/// Whether `python3` imports `vector_quantize_pytorch`; prints a notice naming `what` when not.
pub fn package_available(what: &str) -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import vector_quantize_pytorch"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!(
            "NOTICE: python3 cannot import vector_quantize_pytorch; {what} is not compared with \
             it (pip install vector-quantize-pytorch)"
        );
    }
    ok
}

/// One block of input: a header line, then rows of f32 (each printed as the shortest decimal
/// that reads back as the same f32), then `end`.
pub fn block(header: &str, rows: &[Vec<f32>]) -> String {
    let mut s = format!("{header}\n");
    for row in rows {
        let r: Vec<String> = row.iter().map(|v| format!("{v:?}")).collect();
        s.push_str(&r.join(" "));
        s.push('\n');
    }
    s.push_str("end\n");
    s
}

/// The loop that feeds each block of stdin (its lines without `end`) to the script's
/// `handle(block)` and ends each block's output with `end`.
const BLOCK_LOOP: &str = r#"
import sys
block = []
for line in sys.stdin.read().split("\n"):
    if line.strip() != "end":
        if line.strip():
            block.append(line)
        continue
    handle(block)
    print("end")
    block = []
"#;

/// Runs `script` (Python defining `handle(block)`, which prints its answer to one block) with
/// `input` on stdin, all blocks in one process (importing torch is the slow part), and returns
/// the answers.
pub fn run_blocks(script: &str, input: &str) -> Vec<String> {
    let program = format!("{script}\n{BLOCK_LOOP}");
    let mut child = Command::new("python3")
        .args(["-c", &program])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the reference failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .split("end\n")
        .filter(|b| !b.trim().is_empty())
        .map(str::to_string)
        .collect()
}

/// The whitespace-separated numbers of a line.
pub fn parse_row<T: std::str::FromStr>(l: &str) -> Vec<T>
where
    T::Err: std::fmt::Debug,
{
    l.split_whitespace().map(|v| v.parse().unwrap()).collect()
}
