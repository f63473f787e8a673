//! Hard negative captions made by swapping two words of a caption (NegCLIP, Yuksekgonul et al.,
//! "When and why vision-language models behave like bags-of-words", ICLR 2023). "a red star
//! left of a blue square" becomes "a blue star left of a red square" or "a red square left of a
//! blue star": the same words, another scene. A contrastive loss that must rank the image's own
//! caption above such a copy can only lower it by encoding word order, which plain in-batch
//! negatives rarely demand.

use rand::Rng;
use rand::seq::SliceRandom;

/// A word can be swapped when it has at least this many letters: articles and short
/// prepositions ("a", "of", "um", "de") swap into nonsense that teaches nothing.
const MIN_LETTERS: usize = 3;

/// Up to `limit` distinct captions, each `caption` with two of its words exchanged (words of
/// at least three letters that differ, case-insensitively), drawn at random from every such
/// swap. Punctuation stays where it was. Empty when the caption has fewer than two such words.
pub fn word_swaps(caption: &str, limit: usize, rng: &mut impl Rng) -> Vec<String> {
    let words: Vec<&str> = caption.split_whitespace().collect();
    let core = |w: &str| -> (usize, usize) {
        // The word without leading and trailing punctuation, as a byte range.
        let start = w.find(char::is_alphanumeric).unwrap_or(w.len());
        let end = w.rfind(char::is_alphanumeric).map_or(start, |i| {
            i + w[i..].chars().next().map_or(1, char::len_utf8)
        });
        (start, end.max(start))
    };
    let swappable: Vec<usize> = (0..words.len())
        .filter(|&i| {
            let (s, e) = core(words[i]);
            words[i][s..e].chars().filter(|c| c.is_alphabetic()).count() >= MIN_LETTERS
        })
        .collect();
    let mut swaps: Vec<(usize, usize)> = Vec::new();
    for (k, &a) in swappable.iter().enumerate() {
        for &b in &swappable[k + 1..] {
            let (sa, ea) = core(words[a]);
            let (sb, eb) = core(words[b]);
            if words[a][sa..ea].to_lowercase() != words[b][sb..eb].to_lowercase() {
                swaps.push((a, b));
            }
        }
    }
    swaps.shuffle(rng);
    let mut out: Vec<String> = Vec::new();
    for (a, b) in swaps {
        if out.len() >= limit {
            break;
        }
        let (sa, ea) = core(words[a]);
        let (sb, eb) = core(words[b]);
        let mut swapped: Vec<String> = words.iter().map(|w| w.to_string()).collect();
        swapped[a] = format!(
            "{}{}{}",
            &words[a][..sa],
            &words[b][sb..eb],
            &words[a][ea..]
        );
        swapped[b] = format!(
            "{}{}{}",
            &words[b][..sb],
            &words[a][sa..ea],
            &words[b][eb..]
        );
        let text = swapped.join(" ");
        if !out.contains(&text) {
            out.push(text);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn every_swap_of_distinct_long_words_is_listed_once() {
        let mut rng = StdRng::seed_from_u64(0);
        let mut got = word_swaps("a red star left of a blue square.", 100, &mut rng);
        got.sort();
        // Swappable: red, star, left, blue, square (5 words, 10 pairs).
        assert_eq!(got.len(), 10);
        assert!(got.contains(&"a blue star left of a red square.".to_string()));
        assert!(got.contains(&"a red square left of a blue star.".to_string()));
        for g in &got {
            assert_ne!(g, "a red star left of a blue square.");
            assert!(g.ends_with('.'), "punctuation moved: {g}");
            let mut words: Vec<&str> = g.trim_end_matches('.').split(' ').collect();
            words.sort();
            let mut original: Vec<&str> = "a red star left of a blue square".split(' ').collect();
            original.sort();
            assert_eq!(words, original, "not a permutation: {g}");
        }
    }

    #[test]
    fn limit_seed_and_degenerate_captions() {
        let a = word_swaps(
            "um triângulo vermelho acima de um círculo azul",
            3,
            &mut StdRng::seed_from_u64(7),
        );
        let b = word_swaps(
            "um triângulo vermelho acima de um círculo azul",
            3,
            &mut StdRng::seed_from_u64(7),
        );
        assert_eq!(a, b, "the same seed gives the same swaps");
        assert_eq!(a.len(), 3);
        assert!(a.iter().all(|s| s.split(' ').count() == 8));
        let mut rng = StdRng::seed_from_u64(0);
        assert!(word_swaps("a dog", 5, &mut rng).is_empty());
        assert!(word_swaps("a red RED", 5, &mut rng).is_empty());
        assert!(word_swaps("", 5, &mut rng).is_empty());
    }
}
