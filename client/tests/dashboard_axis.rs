//! The dashboard chart's y-axis labels (client/src/serve/app.js) are five different
//! whole numbers for any rate, the idle pipeline's 0 included. Runs the page's own
//! axis functions in `node` (skipped, with a note, where node is not installed).

use std::process::Command;

/// The source of `function <name>(…) { … }` in the page script.
fn js_function(script: &str, name: &str) -> String {
    let start = script
        .find(&format!("function {name}("))
        .unwrap_or_else(|| panic!("app.js has no function {name}"));
    let end = start
        + script[start..]
            .find("\n}\n")
            .unwrap_or_else(|| panic!("function {name} does not end"))
        + 3;
    script[start..end].to_string()
}

#[test]
fn axis_labels_are_distinct_before_and_after_data_arrives() {
    let script = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/serve/app.js"))
        .expect("read app.js");
    let mut program: String = ["axisScale", "niceCeil", "formatRate"]
        .iter()
        .map(|name| js_function(&script, name))
        .collect();
    program.push_str(
        "for (const max of [0, 0.4, 1, 3, 4.5, 7, 99, 1234, 9999, 123456]) {\n\
           const scale = axisScale(max);\n\
           const labels = [0, 1, 2, 3, 4].map((i) => formatRate((scale * i) / 4));\n\
           console.log(`${max} ${scale} ${labels.join(',')}`);\n\
         }\n",
    );
    let output = match Command::new("node").arg("-e").arg(&program).output() {
        Ok(output) => output,
        Err(e) => {
            eprintln!("skipped: cannot run node: {e}");
            return;
        }
    };
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(stdout.lines().count(), 10, "{stdout}");
    for line in stdout.lines() {
        let mut parts = line.split(' ');
        let (max, scale, labels) = (parts.next(), parts.next(), parts.next());
        let max: f64 = max.and_then(|m| m.parse().ok()).expect("max");
        let scale: f64 = scale.and_then(|s| s.parse().ok()).expect("scale");
        let labels: Vec<&str> = labels.expect("labels").split(',').collect();
        assert!(scale >= max, "{line}: the top is below the data");
        let mut distinct = labels.clone();
        distinct.dedup();
        assert_eq!(distinct.len(), 5, "{line}: repeated labels");
    }
}
