//! min-dalle's tokenizer and Kiln's agree on the fixture prompts
//! (`worker/reference/dalle_fixtures.py` wrote the ids with min-dalle's
//! `TextTokenizer` on the same vocab.json and merges.txt).

use kiln_worker::models::dalle::{text_rows, TextTokenizer};
use std::path::PathBuf;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dalle")
}

#[derive(serde::Deserialize)]
struct Case {
    text: String,
    ids: Vec<i64>,
    rows: [Vec<i64>; 2],
}

#[test]
fn ids_and_rows_equal_min_dalles_for_every_fixture_prompt() {
    let dir = fixtures();
    let tokenizer =
        TextTokenizer::from_files(&dir.join("vocab.json"), &dir.join("merges.txt")).unwrap();
    let cases: Vec<Case> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer.json")).unwrap())
            .unwrap();
    assert!(cases.len() >= 200, "only {} prompts", cases.len());
    let mut mismatches = Vec::new();
    for case in &cases {
        let ids = tokenizer.tokenize(&case.text);
        if ids != case.ids {
            mismatches.push(format!("{:?}: {:?} != {:?}", case.text, ids, case.ids));
            continue;
        }
        assert_eq!(text_rows(&ids, 64).unwrap(), case.rows, "{:?}", case.text);
    }
    assert!(
        mismatches.is_empty(),
        "{} mismatches:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
    // The fixture exercises unknown subwords, emoji and truncation.
    assert!(cases.iter().any(|c| c.ids.contains(&3)));
    assert!(cases.iter().any(|c| c.text.contains('👍')));
    assert!(cases.iter().any(|c| c.ids.len() > 64));
}

#[test]
fn a_missing_vocabulary_is_a_clear_error() {
    let dir = fixtures();
    let e = TextTokenizer::from_files(&dir.join("nope.json"), &dir.join("merges.txt")).unwrap_err();
    assert!(format!("{e:#}").contains("nope.json"), "{e:#}");
}
