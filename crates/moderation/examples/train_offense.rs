//! Trains the offensive-language classifier on COLD and writes `data/offense.bin`; prints the
//! dev precision/recall table and the thresholds (docs/MODERATION.md quotes this output).
//!
//! ```text
//! cargo run --release -p moderation --example train_offense -- /path/to/shared/data/moderation/cold
//! ```
//!
//! Same data and seed -> the same bytes (the example prints their SHA-free checksum too).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Instant;

use moderation::classifier::{
    evaluate, read_cold_csv, threshold_for_fpr, train, Model, TrainConfig,
};

fn load(path: &std::path::Path) -> Vec<(Vec<char>, bool)> {
    let text = std::fs::read_to_string(path).expect("read csv");
    read_cold_csv(text.trim_start_matches('\u{feff}'))
        .into_iter()
        .map(|(t, y)| (moderation::normalize(&t).text.chars().collect(), y))
        .collect()
}

fn main() {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "../shared/data/moderation/cold".to_string());
    let dir = std::path::Path::new(&dir);
    let out = std::env::args()
        .nth(2)
        .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/data/offense.bin").to_string());
    let tr = load(&dir.join("train.csv"));
    let dev = load(&dir.join("dev.csv"));
    println!("train {} dev {}", tr.len(), dev.len());
    let t0 = Instant::now();
    let model = train(&tr, TrainConfig::default());
    println!("trained in {:.1} s", t0.elapsed().as_secs_f64());
    let bytes = model.to_bytes();
    let sum = bytes.iter().fold(0xcbf29ce484222325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    });
    std::fs::write(&out, &bytes).expect("write model");
    println!("wrote {out}: {} bytes, fnv64 {sum:016x}", bytes.len());
    let model = Model::from_bytes(&bytes).expect("round trip");
    report(&model, &dev);
}

fn report(model: &Model, dev: &[(Vec<char>, bool)]) {
    let scored: Vec<(f32, bool)> = dev.iter().map(|(c, y)| (model.score(c), *y)).collect();
    println!("\n| threshold | flagged safe | offensive recall | precision | accuracy |");
    println!("|---|---|---|---|---|");
    for t in [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95] {
        let p = evaluate(&scored, t);
        println!(
            "| {:.2} | {:.1} % | {:.1} % | {:.1} % | {:.1} % |",
            t,
            p.false_positive_rate * 100.0,
            p.recall * 100.0,
            p.precision * 100.0,
            p.accuracy * 100.0
        );
    }
    for fpr in [0.02, 0.005] {
        let t = threshold_for_fpr(&scored, fpr);
        let p = evaluate(&scored, t);
        println!(
            "threshold for <= {:.1} % safe flagged: {t:.4} -> safe flagged {:.2} %, offensive recall {:.1} %, precision {:.1} %",
            fpr * 100.0,
            p.false_positive_rate * 100.0,
            p.recall * 100.0,
            p.precision * 100.0
        );
    }
    let best = (1..100)
        .map(|i| evaluate(&scored, i as f32 / 100.0))
        .max_by(|a, b| a.accuracy.total_cmp(&b.accuracy))
        .unwrap();
    let half = evaluate(&scored, 0.5);
    println!(
        "accuracy at 0.5: {:.1} %; best accuracy {:.1} % at {:.2}",
        half.accuracy * 100.0,
        best.accuracy * 100.0,
        best.threshold
    );
    // Speed of the classifier alone (already-normalized characters, one core).
    let rounds = 50;
    let t0 = Instant::now();
    let mut acc = 0f32;
    for _ in 0..rounds {
        for (c, _) in dev {
            acc += model.score(std::hint::black_box(c));
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let n = (rounds * dev.len()) as f64;
    let chars: usize = dev.iter().map(|(c, _)| c.len()).sum();
    println!(
        "speed: {:.0} msg/s on one core ({:.0} chars/msg on average), checksum {acc:.1}",
        n / secs,
        chars as f64 / dev.len() as f64
    );
}
