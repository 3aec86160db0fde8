//! An offensive-language classifier: hashed character n-grams (1 to 3 characters of the
//! normalized text) and a logistic-regression model, trained on the COLD dataset (see
//! `docs/MODERATION.md`, "Offensive-language classifier").
//!
//! Inference is in-process and allocation-free ([`Model::score`], [`Model::score_hashed`]; the
//! slow path of a model of another size collects the characters): one table load per n-gram from a quantised
//! weight table (`i8`, 2^18 buckets, 256 KiB) shipped inside the crate
//! (`data/offense.bin`), no download at run time. The score is a probability in `0.0..=1.0`;
//! the policy maps score bands to `warn` or `review` (see [`crate::policy::ClassifierConfig`]).
//!
//! [`train`] reproduces the shipped weights bit for bit from the same data and seed
//! (`cargo run --release -p moderation --example train_offense -- <cold dir>`): a fixed hash,
//! a fixed shuffling generator, sequential `f32` arithmetic.

use std::sync::OnceLock;

/// Number of hash buckets, as a power of two.
pub const BITS: u32 = 18;
/// Longest n-gram, in characters.
pub const MAX_N: usize = 3;

const MAGIC: &[u8; 8] = b"CHATDOF1";

/// The shipped model.
static SHIPPED: &[u8] = include_bytes!("../data/offense.bin");

/// A trained model: a bias and one weight per hash bucket, quantised to `i8` with one scale.
#[derive(Clone, Debug, PartialEq)]
pub struct Model {
    /// Bias (logit of an empty text).
    pub bias: f32,
    /// Weight of bucket `i` is `weights[i] as f32 * scale`.
    pub scale: f32,
    /// Quantised weights, `1 << BITS` of them.
    pub weights: Vec<i8>,
}

/// The hash of one character: one multiply. An n-gram's key combines the hashes of its
/// characters by rotations and xor ([`pair_key`], [`triple_key`]), and its bucket is the top
/// [`BITS`] bits of the key. The dictionary matcher's start filter probes with the same keys,
/// so a check hashes each character once for both ([`crate::matcher`]). Changing any of
/// these changes the buckets: retrain (`train_offense`) and re-run the dev report.
#[inline(always)]
pub fn char_hash(c: char) -> u64 {
    (u64::from(c as u32) ^ 0x5851_F42D_0000_0000).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// The key of the character pair `a b`, from their [`char_hash`]es.
#[inline(always)]
pub fn pair_key(ha: u64, hb: u64) -> u64 {
    ha.rotate_left(23) ^ hb
}

/// The key of the character triple `a b c`, from their [`char_hash`]es.
#[inline(always)]
pub fn triple_key(ha: u64, hb: u64, hc: u64) -> u64 {
    ha.rotate_left(46) ^ hb.rotate_left(23) ^ hc
}

/// The bucket of an n-gram key.
#[inline(always)]
pub(crate) fn bucket(key: u64) -> usize {
    (key >> (64 - BITS)) as usize
}

/// Calls `f` with the bucket of every n-gram (n = 1..=MAX_N) of `chars`: at each character,
/// its unigram, then the bigram and the trigram that end there.
#[inline(always)]
pub fn for_each_feature(chars: &[char], mut f: impl FnMut(usize)) {
    let (mut h1, mut h2) = (0u64, 0u64);
    for (i, &c) in chars.iter().enumerate() {
        let h = char_hash(c);
        f(bucket(h));
        if i >= 1 {
            f(bucket(pair_key(h1, h)));
        }
        if i >= 2 {
            f(bucket(triple_key(h2, h1, h)));
        }
        h2 = h1;
        h1 = h;
    }
}

/// Number of n-grams (n = 1..=MAX_N) of a text of `n` characters.
#[inline(always)]
fn feature_count(n: usize) -> u32 {
    (n + n.saturating_sub(1) + n.saturating_sub(2)) as u32
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

impl Model {
    /// The model shipped with the crate (loaded once).
    pub fn shipped() -> &'static Model {
        static M: OnceLock<Model> = OnceLock::new();
        M.get_or_init(|| {
            Model::from_bytes(SHIPPED).unwrap_or(Model {
                bias: 0.0,
                scale: 0.0,
                weights: vec![0; 1 << BITS],
            })
        })
    }

    /// The probability that the normalized characters `chars` are offensive.
    #[inline]
    pub fn score(&self, chars: &[char]) -> f32 {
        if self.weights.len() != 1 << BITS {
            return self.score_iter(chars.iter().copied());
        }
        self.score_hashes(chars.iter().map(|&c| char_hash(c)), chars.len())
    }

    /// [`Model::score`] over characters given one by one: the same n-grams and buckets as
    /// [`for_each_feature`], so the score is identical.
    #[inline]
    pub fn score_iter(&self, chars: impl IntoIterator<Item = char>) -> f32 {
        let v: Vec<char> = chars.into_iter().collect();
        let mut sum = 0i64;
        let mut n = 0u32;
        for_each_feature(&v, |b| {
            sum += i64::from(self.weights.get(b).copied().unwrap_or(0));
            n += 1;
        });
        sigmoid(self.bias + self.scale * sum as f32 / norm(n))
    }

    /// [`Model::score`] from the [`char_hash`] of each character (what the check does: the
    /// dictionary matcher needs the same hashes): the same n-grams and buckets as
    /// [`for_each_feature`], so the same score bit for bit.
    #[inline]
    pub fn score_hashed(&self, hashes: &[u64]) -> f32 {
        self.score_hashes(hashes.iter().copied(), hashes.len())
    }

    /// The score of the `n` characters whose [`char_hash`]es `hashes` yields. One pass, three
    /// table loads per character and no branch in the loop: the trigram key is the previous
    /// bigram key rotated once more (`triple_key(a, b, c) == pair_key(pair_key(a, b), c)`);
    /// the first two characters, which start fewer n-grams, are taken before the loop.
    #[inline(always)]
    fn score_hashes(&self, hashes: impl Iterator<Item = u64>, n: usize) -> f32 {
        let Ok(w) = <&[i8; 1 << BITS]>::try_from(self.weights.as_slice()) else {
            // Not a model of this build (hand-made with another size): no weights apply.
            return sigmoid(self.bias);
        };
        let weight = |key: u64| i64::from(w[bucket(key)]);
        let mut it = hashes;
        let mut sum = 0i64;
        if let Some(h0) = it.next() {
            sum += weight(h0);
            if let Some(h) = it.next() {
                let mut bi1 = pair_key(h0, h);
                sum += weight(h) + weight(bi1);
                let mut h1 = h;
                for h in it {
                    let bi = pair_key(h1, h);
                    sum += weight(h) + weight(bi) + weight(pair_key(bi1, h));
                    h1 = h;
                    bi1 = bi;
                }
            }
        }
        self.score_of_sum(sum, n)
    }

    /// The weight table when it has the size of this build (`None` for a hand-made model of
    /// another size): what the check's fused pass reads (see [`crate::matcher`]).
    #[inline]
    pub(crate) fn table(&self) -> Option<&[i8; 1 << BITS]> {
        <&[i8; 1 << BITS]>::try_from(self.weights.as_slice()).ok()
    }

    /// The score of `n` characters whose n-gram weights (from [`Model::table`]) add up to
    /// `sum`: the same arithmetic as [`Model::score`], so the same score bit for bit.
    #[inline]
    pub(crate) fn score_of_sum(&self, sum: i64, n: usize) -> f32 {
        sigmoid(self.bias + self.scale * sum as f32 / norm(feature_count(n)))
    }

    /// The score of a message text, normalized with the default separators.
    pub fn score_text(&self, text: &str) -> f32 {
        let chars: Vec<char> = crate::normalize(text).text.chars().collect();
        self.score(&chars)
    }

    /// Serialized form: magic, bits, bias, scale, weights.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.weights.len() + 20);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&BITS.to_le_bytes());
        out.extend_from_slice(&self.bias.to_le_bytes());
        out.extend_from_slice(&self.scale.to_le_bytes());
        out.extend(self.weights.iter().map(|&w| w as u8));
        out
    }

    /// Parses [`Model::to_bytes`]; `None` when the bytes are not a model of this build.
    pub fn from_bytes(b: &[u8]) -> Option<Model> {
        let header = 8 + 4 + 4 + 4;
        if b.get(..8)? != MAGIC {
            return None;
        }
        let word = |at: usize| -> Option<[u8; 4]> { b.get(at..at + 4)?.try_into().ok() };
        if u32::from_le_bytes(word(8)?) != BITS {
            return None;
        }
        let bias = f32::from_le_bytes(word(12)?);
        let scale = f32::from_le_bytes(word(16)?);
        let weights: Vec<i8> = b.get(header..)?.iter().map(|&x| x as i8).collect();
        (weights.len() == 1 << BITS).then_some(Model {
            bias,
            scale,
            weights,
        })
    }
}

/// Feature scaling: the sum of weights divided by the square root of the n-gram count, so a
/// long text is not more offensive for being long.
#[inline(always)]
fn norm(n: u32) -> f32 {
    (n.max(1) as f32).sqrt()
}

/// Training settings.
#[derive(Clone, Copy, Debug)]
pub struct TrainConfig {
    /// Passes over the data.
    pub epochs: u32,
    /// Adagrad learning rate.
    pub rate: f32,
    /// L2 penalty per update.
    pub l2: f32,
    /// Seed of the shuffling generator.
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: 8,
            rate: 0.1,
            l2: 1e-6,
            seed: 14,
        }
    }
}

/// Trains a model on `(normalized characters, offensive)` samples: logistic regression by
/// Adagrad over shuffled samples (xorshift, fixed seed), then weights quantised to `i8`.
/// Deterministic: the same samples and config give the same bytes.
pub fn train(samples: &[(Vec<char>, bool)], cfg: TrainConfig) -> Model {
    let size = 1usize << BITS;
    let mut w = vec![0f32; size];
    let mut g2 = vec![1e-8f32; size];
    let (mut bias, mut bias_g2) = (0f32, 1e-8f32);
    let mut order: Vec<usize> = (0..samples.len()).collect();
    let mut rng = cfg.seed.max(1);
    let mut feats = Vec::new();
    for _ in 0..cfg.epochs {
        for i in (1..order.len()).rev() {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            order.swap(i, (rng % (i as u64 + 1)) as usize);
        }
        for &k in &order {
            let Some((chars, y)) = samples.get(k) else {
                continue;
            };
            feats.clear();
            for_each_feature(chars, |b| feats.push(b));
            let z = norm(feats.len() as u32);
            let dot: f32 = feats.iter().map(|&b| w[b]).sum::<f32>() / z;
            let p = sigmoid(bias + dot);
            let err = p - if *y { 1.0 } else { 0.0 };
            for &b in &feats {
                let g = err / z + cfg.l2 * w[b];
                g2[b] += g * g;
                w[b] -= cfg.rate * g / g2[b].sqrt();
            }
            bias_g2 += err * err;
            bias -= cfg.rate * err / bias_g2.sqrt();
        }
    }
    let max = w.iter().fold(0f32, |m, &x| m.max(x.abs())).max(1e-9);
    let scale = max / 127.0;
    let weights = w
        .iter()
        .map(|&x| (x / scale).round().clamp(-127.0, 127.0) as i8)
        .collect();
    Model {
        bias,
        scale,
        weights,
    }
}

/// Reads a COLD csv file (`idx,split,topic,label,TEXT`, `TEXT` possibly quoted) into
/// `(text, offensive)` pairs.
pub fn read_cold_csv(text: &str) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let mut parts = line.splitn(5, ',');
        let (_, _, _, label, body) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        );
        let (Some(label), Some(body)) = (label, body) else {
            continue;
        };
        let body = match body.strip_prefix('"').and_then(|b| b.strip_suffix('"')) {
            Some(inner) => inner.replace("\"\"", "\""),
            None => body.to_string(),
        };
        match label {
            "0" => out.push((body, false)),
            "1" => out.push((body, true)),
            _ => {}
        }
    }
    out
}

/// One row of a precision/recall table on labelled data.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Point {
    /// Score threshold (flag when `score >= threshold`).
    pub threshold: f32,
    /// Offensive texts flagged / offensive texts.
    pub recall: f64,
    /// Safe texts flagged / safe texts.
    pub false_positive_rate: f64,
    /// Offensive among flagged.
    pub precision: f64,
    /// Correct decisions / all texts.
    pub accuracy: f64,
}

/// The point at `threshold` for `(score, offensive)` pairs.
pub fn evaluate(scored: &[(f32, bool)], threshold: f32) -> Point {
    let (mut tp, mut fp, mut pos, mut neg) = (0usize, 0usize, 0usize, 0usize);
    for &(s, y) in scored {
        let flag = s >= threshold;
        if y {
            pos += 1;
            tp += usize::from(flag);
        } else {
            neg += 1;
            fp += usize::from(flag);
        }
    }
    let tn = neg - fp;
    Point {
        threshold,
        recall: tp as f64 / pos.max(1) as f64,
        false_positive_rate: fp as f64 / neg.max(1) as f64,
        precision: tp as f64 / (tp + fp).max(1) as f64,
        accuracy: (tp + tn) as f64 / scored.len().max(1) as f64,
    }
}

/// The lowest threshold (of the scores seen) that flags at most `max_fpr` of the safe texts.
pub fn threshold_for_fpr(scored: &[(f32, bool)], max_fpr: f64) -> f32 {
    let mut safe: Vec<f32> = scored.iter().filter(|s| !s.1).map(|s| s.0).collect();
    safe.sort_by(|a, b| b.total_cmp(a));
    let allowed = (max_fpr * safe.len() as f64).floor() as usize;
    // Flag strictly above the (allowed+1)-th highest safe score.
    safe.get(allowed)
        .map_or(0.0, |&s| f32::from_bits(s.to_bits() + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The score as first defined: the weights of every bucket of [`for_each_feature`].
    fn reference(m: &Model, chars: &[char]) -> f32 {
        let (mut sum, mut n) = (0i32, 0u32);
        for_each_feature(chars, |b| {
            sum += i32::from(m.weights.get(b).copied().unwrap_or(0));
            n += 1;
        });
        sigmoid(m.bias + m.scale * sum as f32 / norm(n))
    }

    #[test]
    fn one_pass_score_is_the_feature_sum() {
        let m = Model::shipped();
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        let alphabet: Vec<char> = "你好傻逼垃圾的人我们abcxyz019 ，！😀".chars().collect();
        for len in 0..40usize {
            for _ in 0..20 {
                let chars: Vec<char> = (0..len)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        alphabet[(x % alphabet.len() as u64) as usize]
                    })
                    .collect();
                assert_eq!(
                    m.score(&chars).to_bits(),
                    reference(m, &chars).to_bits(),
                    "{chars:?}"
                );
            }
        }
        // A model of another size takes the slow path with the same result.
        let chars: Vec<char> = "你好傻逼垃圾的人".chars().collect();
        let hashes: Vec<u64> = chars.iter().map(|&c| char_hash(c)).collect();
        assert_eq!(
            m.score_hashed(&hashes).to_bits(),
            reference(m, &chars).to_bits()
        );
        let small = Model {
            bias: m.bias,
            scale: m.scale,
            weights: m.weights[..1000].to_vec(),
        };
        let chars: Vec<char> = "你好傻逼垃圾".chars().collect();
        assert_eq!(
            small.score(&chars).to_bits(),
            reference(&small, &chars).to_bits()
        );
    }
}
