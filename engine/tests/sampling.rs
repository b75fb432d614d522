//! The sampler against hand-computed cuts and, for the draw, against the softmax it should follow
//! (many draws with a fixed seed, frequencies within a named tolerance).

use ember_engine::sampling::{Penalties, Sampler, SamplingParams, Strategy};
use ember_engine::EngineError;

/// Draws per distribution test.
const DRAWS: usize = 20_000;
/// Allowed gap between an empirical frequency and its probability. The standard deviation of a
/// frequency over 20k draws is at most sqrt(0.25 / 20000) ≈ 0.0035, so this is > 4σ.
const FREQ_TOL: f64 = 0.015;

fn sample_params(temperature: f32, top_k: usize, top_p: f32, min_p: f32) -> SamplingParams {
    SamplingParams {
        strategy: Strategy::Sample { temperature, top_k, top_p, min_p },
        penalties: Penalties::default(),
        seed: 1234,
    }
}

fn sampler(params: SamplingParams) -> Sampler {
    Sampler::new(params).expect("valid parameters")
}

/// Empirical frequency of every token over `DRAWS` draws.
fn frequencies(s: &mut Sampler, logits: &[f32]) -> Vec<f64> {
    let mut counts = vec![0usize; logits.len()];
    for _ in 0..DRAWS {
        let t = s.sample(logits, &[]) as usize;
        assert!(t < logits.len(), "token {t} outside the vocabulary");
        counts[t] += 1;
    }
    counts.iter().map(|&c| c as f64 / DRAWS as f64).collect()
}

fn softmax(logits: &[f32], temperature: f64) -> Vec<f64> {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &l| m.max(l)) as f64;
    let w: Vec<f64> = logits.iter().map(|&l| ((l as f64 - max) / temperature).exp()).collect();
    let z: f64 = w.iter().sum();
    w.iter().map(|x| x / z).collect()
}

fn assert_close(got: &[f64], want: &[f64]) {
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= FREQ_TOL, "token {i}: frequency {g:.4}, expected {w:.4} ± {FREQ_TOL}\n got {got:?}\nwant {want:?}");
    }
}

/// Logits whose softmax at T = 1 is exactly (up to rounding) `probs`.
fn logits_of(probs: &[f64]) -> Vec<f32> {
    probs.iter().map(|p| p.ln() as f32).collect()
}

/// `probs` restricted to `keep` and renormalised.
fn restricted(probs: &[f64], keep: &[usize]) -> Vec<f64> {
    let z: f64 = keep.iter().map(|&i| probs[i]).sum();
    (0..probs.len()).map(|i| if keep.contains(&i) { probs[i] / z } else { 0.0 }).collect()
}

const PROBS: [f64; 4] = [0.5, 0.3, 0.15, 0.05];

#[test]
fn greedy_is_argmax_with_ties_to_lowest_id() {
    let mut s = sampler(SamplingParams::greedy());
    assert_eq!(s.sample(&[0.1, 2.0, -1.0, 1.5], &[]), 1);
    assert_eq!(s.sample(&[3.0, 1.0, 3.0, 3.0], &[]), 0);
    assert_eq!(s.sample(&[-5.0, -1.0, -1.0], &[]), 1);
}

#[test]
fn nan_and_infinite_logits_do_not_panic() {
    let mut greedy = sampler(SamplingParams::greedy());
    assert_eq!(greedy.sample(&[f32::NAN, 1.0, f32::NAN], &[]), 1);
    assert_eq!(greedy.sample(&[f32::NAN, f32::NAN], &[]), 0);
    assert_eq!(greedy.sample(&[], &[]), 0);
    assert_eq!(greedy.sample(&[1.0, f32::INFINITY, 2.0], &[]), 1);

    let mut s = sampler(sample_params(0.8, 40, 0.95, 0.05));
    for _ in 0..100 {
        assert_eq!(s.sample(&[f32::NAN, 1.0, f32::NAN, f32::NEG_INFINITY], &[]), 1);
        assert_eq!(s.sample(&[0.0, f32::INFINITY, 5.0], &[]), 1);
    }
    assert_eq!(s.sample(&[f32::NAN; 3], &[]), 0);
    assert_eq!(s.sample(&[f32::NEG_INFINITY; 3], &[]), 0);
    assert_eq!(s.sample(&[], &[]), 0);
}

#[test]
fn draws_follow_softmax_at_the_temperature() {
    let logits = [1.0, 2.0, 0.5, 3.0, -1.0];
    for temperature in [0.7f32, 1.0, 1.8] {
        let mut s = sampler(sample_params(temperature, 0, 1.0, 0.0));
        let got = frequencies(&mut s, &logits);
        assert_close(&got, &softmax(&logits, temperature as f64));
    }
}

#[test]
fn temperature_zero_picks_the_best_token() {
    let mut s = sampler(sample_params(0.0, 40, 0.95, 0.05));
    for _ in 0..50 {
        assert_eq!(s.sample(&[0.5, 4.0, 4.0, 1.0], &[]), 1);
    }
}

#[test]
fn top_k_never_returns_outside_the_top_k() {
    // 100 tokens with distinct logits; a high temperature spreads the draws over the top 5.
    let logits: Vec<f32> = (0..100).map(|i| ((i * 37) % 100) as f32 * 0.01).collect();
    let mut ranked: Vec<usize> = (0..100).collect();
    ranked.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    let top5 = &ranked[..5];
    let mut s = sampler(sample_params(5.0, 5, 1.0, 0.0));
    let freq = frequencies(&mut s, &logits);
    for (t, f) in freq.iter().enumerate() {
        if top5.contains(&t) {
            assert!(*f > 0.1, "token {t} is in the top 5 but was drawn with frequency {f}");
        } else {
            assert_eq!(*f, 0.0, "token {t} is outside the top 5 but was drawn");
        }
    }
    // Within the top k, the draw still follows the softmax.
    let top_logits: Vec<f32> = logits.iter().enumerate().map(|(i, &l)| if top5.contains(&i) { l } else { f32::NEG_INFINITY }).collect();
    assert_close(&freq, &softmax(&top_logits, 5.0));
}

#[test]
fn top_k_of_one_is_greedy() {
    let mut s = sampler(sample_params(1.0, 1, 1.0, 0.0));
    for _ in 0..100 {
        assert_eq!(s.sample(&[0.0, 0.9, 1.0, 0.95], &[]), 2);
    }
}

#[test]
fn top_p_keeps_the_smallest_prefix_reaching_p() {
    // Cumulative probabilities 0.5, 0.8, 0.95, 1.0.
    let logits = logits_of(&PROBS);
    for (top_p, keep) in [(0.4, &[0][..]), (0.75, &[0, 1]), (0.85, &[0, 1, 2]), (0.99, &[0, 1, 2, 3])] {
        let mut s = sampler(sample_params(1.0, 0, top_p, 0.0));
        let got = frequencies(&mut s, &logits);
        assert_close(&got, &restricted(&PROBS, keep));
        for (t, f) in got.iter().enumerate() {
            assert_eq!(*f > 0.0, keep.contains(&t), "top_p {top_p}: token {t}");
        }
    }
}

#[test]
fn top_p_over_a_large_flat_vocabulary() {
    // 2000 equal logits: p = 0.5 keeps exactly 1000 tokens, the lowest ids (ties rank by id).
    // This crosses the sampler's growing partial-selection prefix (256, then 1024).
    let logits = vec![0.0f32; 2000];
    let mut s = sampler(sample_params(1.0, 0, 0.5, 0.0));
    let mut highest = 0;
    for _ in 0..DRAWS {
        let t = s.sample(&logits, &[]);
        assert!(t < 1000, "top-p 0.5 of 2000 equal tokens drew {t}");
        highest = highest.max(t);
    }
    assert!(highest > 950, "draws should spread over all 1000 kept tokens (highest {highest})");
}

#[test]
fn min_p_drops_tokens_below_min_p_times_max() {
    // max prob 0.5: min_p 0.2 → threshold 0.1, 0.5 → 0.25, 0.7 → 0.35.
    let logits = logits_of(&PROBS);
    for (min_p, keep) in [(0.2, &[0, 1, 2][..]), (0.5, &[0, 1]), (0.7, &[0]), (0.05, &[0, 1, 2, 3])] {
        let mut s = sampler(sample_params(1.0, 0, 1.0, min_p));
        let got = frequencies(&mut s, &logits);
        assert_close(&got, &restricted(&PROBS, keep));
        for (t, f) in got.iter().enumerate() {
            assert_eq!(*f > 0.0, keep.contains(&t), "min_p {min_p}: token {t}");
        }
    }
}

#[test]
fn top_p_then_min_p_keep_the_intersection() {
    let logits = logits_of(&PROBS);
    // top-p 0.85 keeps {0, 1, 2}; min-p 0.5 keeps {0, 1}.
    let mut s = sampler(sample_params(1.0, 0, 0.85, 0.5));
    assert_close(&frequencies(&mut s, &logits), &restricted(&PROBS, &[0, 1]));
    // top-p 0.4 keeps {0}; min-p 0.2 would keep {0, 1, 2}.
    let mut s = sampler(sample_params(1.0, 0, 0.4, 0.2));
    assert_close(&frequencies(&mut s, &logits), &restricted(&PROBS, &[0]));
}

#[test]
fn cuts_are_measured_before_temperature_like_llama_cpp() {
    // llama.cpp's chain is top-k → top-p → min-p → temperature: at T = 3 the min-p 0.2 cut is
    // still {0, 1, 2}, and the draw among them follows softmax(logit / 3).
    let logits = logits_of(&PROBS);
    let mut s = sampler(sample_params(3.0, 0, 1.0, 0.2));
    let kept: Vec<f32> = logits.iter().enumerate().map(|(i, &l)| if i < 3 { l } else { f32::NEG_INFINITY }).collect();
    assert_close(&frequencies(&mut s, &logits), &softmax(&kept, 3.0));
}

#[test]
fn penalties_follow_the_formulas() {
    let params = SamplingParams {
        strategy: Strategy::Greedy,
        penalties: Penalties { repeat: 2.0, presence: 0.5, frequency: 0.25, last_n: 64 },
        seed: 0,
    };
    let mut s = sampler(params.clone());
    let logits = [2.0, -2.0, 1.0, 0.5, 3.0];
    // Token 0 seen twice, 1 once, 3 once; 9 is outside the vocabulary and ignored.
    let history = [0, 1, 0, 3, 9];
    let got = s.penalized_logits(&logits, &history);
    let want = [
        2.0 / 2.0 - 2.0 * 0.25 - 0.5,  // positive: divided by repeat
        -2.0 * 2.0 - 1.0 * 0.25 - 0.5, // negative: multiplied by repeat
        1.0,                           // unseen
        0.5 / 2.0 - 1.0 * 0.25 - 0.5,
        3.0,
    ];
    assert_eq!(got, want);

    // Only the last `last_n` tokens count: with last_n = 2 the window is [3, 9].
    let mut s = sampler(SamplingParams { penalties: Penalties { last_n: 2, ..params.penalties.clone() }, ..params.clone() });
    let got = s.penalized_logits(&logits, &history);
    assert_eq!(got, [2.0, -2.0, 1.0, 0.5 / 2.0 - 0.25 - 0.5, 3.0]);

    // last_n = 0 turns penalties off.
    let mut s = sampler(SamplingParams { penalties: Penalties { last_n: 0, ..params.penalties }, ..params });
    assert_eq!(s.penalized_logits(&logits, &history), logits);
}

#[test]
fn penalties_steer_the_choice() {
    let params = SamplingParams {
        strategy: Strategy::Greedy,
        penalties: Penalties { repeat: 1.5, ..Penalties::default() },
        seed: 0,
    };
    let mut s = sampler(params);
    let logits = [2.0, 1.5, 0.0];
    assert_eq!(s.sample(&logits, &[]), 0);
    assert_eq!(s.sample(&logits, &[0]), 1, "2.0 / 1.5 < 1.5");

    let mut s = sampler(SamplingParams {
        strategy: Strategy::Greedy,
        penalties: Penalties { presence: 1.0, ..Penalties::default() },
        seed: 0,
    });
    assert_eq!(s.sample(&logits, &[0, 1]), 0, "both seen: 1.0 vs 0.5");
    assert_eq!(s.sample(&logits, &[0]), 1, "1.0 < 1.5");
}

#[test]
fn same_seed_same_sequence_different_seed_different_sequence() {
    let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
    let run = |seed: u64| {
        let mut s = sampler(SamplingParams { seed, ..sample_params(1.0, 0, 1.0, 0.0) });
        (0..200).map(|_| s.sample(&logits, &[])).collect::<Vec<u32>>()
    };
    assert_eq!(run(7), run(7));
    assert_ne!(run(7), run(8));
}

#[test]
fn reseed_restarts_the_sequence() {
    let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).cos()).collect();
    let mut s = sampler(SamplingParams { seed: 42, ..sample_params(1.0, 0, 1.0, 0.0) });
    let first: Vec<u32> = (0..100).map(|_| s.sample(&logits, &[])).collect();
    s.reseed(42);
    let again: Vec<u32> = (0..100).map(|_| s.sample(&logits, &[])).collect();
    assert_eq!(first, again);
    assert_eq!(s.params().seed, 42);
}

#[test]
fn defaults_are_llama_cpp_defaults() {
    let p = SamplingParams::default();
    assert_eq!(p.strategy, Strategy::Sample { temperature: 0.8, top_k: 40, top_p: 0.95, min_p: 0.05 });
    assert_eq!(p.penalties, Penalties { repeat: 1.0, presence: 0.0, frequency: 0.0, last_n: 64 });
    assert!(p.penalties.is_off());
    assert_eq!(SamplingParams::greedy().strategy, Strategy::Greedy);
    assert!(Sampler::new(p).is_ok());
}

#[test]
fn bad_parameters_are_rejected_with_their_name() {
    let bad_sample = [
        (sample_params(-0.1, 40, 0.95, 0.05), "temperature"),
        (sample_params(f32::NAN, 40, 0.95, 0.05), "temperature"),
        (sample_params(f32::INFINITY, 40, 0.95, 0.05), "temperature"),
        (sample_params(0.8, 40, 0.0, 0.05), "top_p"),
        (sample_params(0.8, 40, 1.01, 0.05), "top_p"),
        (sample_params(0.8, 40, f32::NAN, 0.05), "top_p"),
        (sample_params(0.8, 40, 0.95, 1.0), "min_p"),
        (sample_params(0.8, 40, 0.95, -0.01), "min_p"),
        (sample_params(0.8, 40, 0.95, f32::NAN), "min_p"),
    ];
    let pen = |p: Penalties| SamplingParams { penalties: p, ..SamplingParams::greedy() };
    let bad_penalties = [
        (pen(Penalties { repeat: 0.0, ..Penalties::default() }), "repeat_penalty"),
        (pen(Penalties { repeat: f32::NAN, ..Penalties::default() }), "repeat_penalty"),
        (pen(Penalties { presence: f32::NAN, ..Penalties::default() }), "presence_penalty"),
        (pen(Penalties { frequency: f32::INFINITY, ..Penalties::default() }), "frequency_penalty"),
    ];
    for (params, expected) in bad_sample.into_iter().chain(bad_penalties) {
        match Sampler::new(params.clone()) {
            Err(EngineError::Param { name, problem }) => {
                assert_eq!(name, expected, "{params:?}: {problem}");
                let msg = EngineError::Param { name, problem }.to_string();
                assert!(msg.contains(expected), "message `{msg}` should name `{expected}`");
            }
            Err(other) => panic!("{params:?}: expected a Param error, got {other}"),
            Ok(_) => panic!("{params:?} was accepted"),
        }
    }
    // Edges that are allowed: T = 0, top_p = 1, min_p = 0, negative presence (a bonus).
    assert!(Sampler::new(sample_params(0.0, 0, 1.0, 0.0)).is_ok());
    assert!(Sampler::new(pen(Penalties { presence: -0.5, ..Penalties::default() })).is_ok());
}
