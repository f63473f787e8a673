//! The bundled benchmark dataset: rendered scenes of one to three shapes over textured
//! backgrounds, each with several captions in English or Portuguese, written in the Hugging Face
//! imagefolder convention, or as parquet shards in the `datasets` layout.
//!
//! The captions are compositional on purpose: "a small red triangle left of a blue circle" and
//! "a small blue triangle left of a red circle" describe different scenes with the same words, so
//! a bag-of-words model cannot separate them and there is room for fine-tuning and re-ranking.
//! Every scene is a pure function of `(seed, index)`, so a dataset is reproducible row by row
//! whatever the number of threads.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use serde_json::json;

use crate::error::{Error, Result};

/// What to generate.
#[derive(Debug, Clone)]
pub struct ShapesConfig {
    pub rows: usize,
    pub seed: u64,
    /// Image side in pixels.
    pub size: u32,
    /// Share of rows whose captions are in Portuguese (the others are in English).
    pub portuguese: f64,
    /// Shares of the validation and test splits; the rest is train.
    pub validation: f64,
    pub test: f64,
    /// Write `data/<split>-00000-of-00001.parquet` (images embedded as bytes) instead of the
    /// imagefolder. Not both in one folder: `datasets` would take the split-named shards as the
    /// splits and find no images in them.
    pub parquet: bool,
    pub progress: bool,
}

impl Default for ShapesConfig {
    fn default() -> Self {
        ShapesConfig {
            rows: 3000,
            seed: 0,
            size: 64,
            portuguese: 0.5,
            validation: 0.1,
            test: 0.1,
            parquet: false,
            progress: false,
        }
    }
}

/// What was written.
#[derive(Debug, Clone)]
pub struct ShapesSummary {
    pub folder: PathBuf,
    pub rows: usize,
    /// Rows per split: train, validation, test.
    pub splits: [usize; 3],
    pub captions: usize,
    pub parquet_files: Vec<PathBuf>,
}

const SPLITS: [&str; 3] = ["train", "validation", "test"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Circle,
    Square,
    Triangle,
    Star,
    Diamond,
    Cross,
}

const SHAPES: [Shape; 6] = [
    Shape::Circle,
    Shape::Square,
    Shape::Triangle,
    Shape::Star,
    Shape::Diamond,
    Shape::Cross,
];

impl Shape {
    fn en(self) -> &'static str {
        match self {
            Shape::Circle => "circle",
            Shape::Square => "square",
            Shape::Triangle => "triangle",
            Shape::Star => "star",
            Shape::Diamond => "diamond",
            Shape::Cross => "cross",
        }
    }

    fn en_plural(self) -> &'static str {
        match self {
            Shape::Cross => "crosses",
            Shape::Circle => "circles",
            Shape::Square => "squares",
            Shape::Triangle => "triangles",
            Shape::Star => "stars",
            Shape::Diamond => "diamonds",
        }
    }

    /// Portuguese noun, its plural, and whether it is feminine (adjectives agree with it).
    fn pt(self) -> (&'static str, &'static str, bool) {
        match self {
            Shape::Circle => ("círculo", "círculos", false),
            Shape::Square => ("quadrado", "quadrados", false),
            Shape::Triangle => ("triângulo", "triângulos", false),
            Shape::Star => ("estrela", "estrelas", true),
            Shape::Diamond => ("losango", "losangos", false),
            Shape::Cross => ("cruz", "cruzes", true),
        }
    }

    /// Whether the point `(x, y)`, relative to the centre and in units of the radius, is inside.
    fn contains(self, x: f32, y: f32) -> bool {
        match self {
            Shape::Circle => x * x + y * y <= 1.0,
            Shape::Square => x.abs() <= 0.82 && y.abs() <= 0.82,
            Shape::Diamond => x.abs() / 0.8 + y.abs() <= 1.0,
            Shape::Cross => {
                (x.abs() <= 0.3 && y.abs() <= 0.95) || (y.abs() <= 0.3 && x.abs() <= 0.95)
            }
            Shape::Triangle => {
                // Upward equilateral triangle inscribed in the unit circle.
                let h = 1.5f32;
                let top = -1.0;
                let t = (y - top) / h;
                (0.0..=1.0).contains(&t) && x.abs() <= t * 0.866
            }
            Shape::Star => {
                let r = (x * x + y * y).sqrt();
                if r > 1.0 {
                    return false;
                }
                // Five points, one up: the boundary radius interpolates between outer (1) and
                // inner (0.42) radii along each 36° sector.
                let angle = y.atan2(x) + std::f32::consts::FRAC_PI_2;
                let sector = std::f32::consts::PI / 5.0;
                let a = angle.rem_euclid(2.0 * sector) / sector;
                let frac = if a <= 1.0 { a } else { 2.0 - a };
                let inner = 0.42f32;
                // Straight edge from the tip (frac 0, radius 1) to the notch (frac 1, inner):
                // in polar form along the edge, radius ≈ 1 / (1/1 + frac * (1/inner - 1)).
                r <= 1.0 / (1.0 + frac * (1.0 / inner - 1.0))
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Colour {
    en: &'static str,
    /// Masculine singular, feminine singular, masculine plural, feminine plural.
    pt: [&'static str; 4],
    rgb: [u8; 3],
}

const COLOURS: [Colour; 8] = [
    Colour {
        en: "red",
        pt: ["vermelho", "vermelha", "vermelhos", "vermelhas"],
        rgb: [215, 35, 35],
    },
    Colour {
        en: "green",
        pt: ["verde", "verde", "verdes", "verdes"],
        rgb: [35, 165, 55],
    },
    Colour {
        en: "blue",
        pt: ["azul", "azul", "azuis", "azuis"],
        rgb: [35, 75, 215],
    },
    Colour {
        en: "yellow",
        pt: ["amarelo", "amarela", "amarelos", "amarelas"],
        rgb: [235, 205, 35],
    },
    Colour {
        en: "purple",
        pt: ["roxo", "roxa", "roxos", "roxas"],
        rgb: [135, 55, 175],
    },
    Colour {
        en: "orange",
        pt: ["laranja", "laranja", "laranja", "laranja"],
        rgb: [240, 135, 25],
    },
    Colour {
        en: "white",
        pt: ["branco", "branca", "brancos", "brancas"],
        rgb: [245, 245, 245],
    },
    Colour {
        en: "black",
        pt: ["preto", "preta", "pretos", "pretas"],
        rgb: [20, 20, 20],
    },
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Background {
    Plain,
    Noise,
    Stripes,
    Checker,
    Gradient,
}

const BACKGROUNDS: [Background; 5] = [
    Background::Plain,
    Background::Noise,
    Background::Stripes,
    Background::Checker,
    Background::Gradient,
];

impl Background {
    fn name(self) -> &'static str {
        match self {
            Background::Plain => "plain",
            Background::Noise => "noisy",
            Background::Stripes => "striped",
            Background::Checker => "checkered",
            Background::Gradient => "gradient",
        }
    }

    fn en(self) -> &'static str {
        match self {
            Background::Plain => "on a plain background",
            Background::Noise => "on a noisy background",
            Background::Stripes => "on a striped background",
            Background::Checker => "on a checkered background",
            Background::Gradient => "on a gradient background",
        }
    }

    fn pt(self) -> &'static str {
        match self {
            Background::Plain => "sobre um fundo liso",
            Background::Noise => "sobre um fundo granulado",
            Background::Stripes => "sobre um fundo listrado",
            Background::Checker => "sobre um fundo xadrez",
            Background::Gradient => "sobre um fundo em degradê",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Size {
    Small,
    Large,
}

#[derive(Debug, Clone, Copy)]
struct Object {
    shape: Shape,
    colour: usize,
    size: Size,
    /// Centre and radius in pixels.
    x: f32,
    y: f32,
    r: f32,
    /// Cell of a 3x3 grid holding the centre: (row, column).
    cell: (u8, u8),
}

/// Where one object lies relative to another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Relation {
    LeftOf,
    RightOf,
    Above,
    Below,
}

impl Relation {
    fn inverse(self) -> Relation {
        match self {
            Relation::LeftOf => Relation::RightOf,
            Relation::RightOf => Relation::LeftOf,
            Relation::Above => Relation::Below,
            Relation::Below => Relation::Above,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Relation::LeftOf => "left_of",
            Relation::RightOf => "right_of",
            Relation::Above => "above",
            Relation::Below => "below",
        }
    }

    fn en(self, variant: usize) -> &'static str {
        let options: &[&str] = match self {
            Relation::LeftOf => &["to the left of", "left of", "on the left of"],
            Relation::RightOf => &["to the right of", "right of", "on the right of"],
            Relation::Above => &["above", "over", "on top of"],
            Relation::Below => &["below", "under", "beneath"],
        };
        options[variant % options.len()]
    }

    fn pt(self, variant: usize) -> &'static str {
        let options: &[&str] = match self {
            Relation::LeftOf => &["à esquerda de", "ao lado esquerdo de"],
            Relation::RightOf => &["à direita de", "ao lado direito de"],
            Relation::Above => &["acima de", "em cima de"],
            Relation::Below => &["abaixo de", "embaixo de"],
        };
        options[variant % options.len()]
    }
}

/// One generated row: the scene and its captions.
#[derive(Debug, Clone)]
struct Scene {
    objects: Vec<Object>,
    background: Background,
    /// The relation of object 0 to object 1 in two-object scenes.
    relation: Option<Relation>,
    portuguese: bool,
    split: usize,
    captions: Vec<String>,
}

fn pick<T: Copy>(rng: &mut StdRng, items: &[T]) -> T {
    items[rng.random_range(0..items.len())]
}

impl Scene {
    fn generate(config: &ShapesConfig, index: usize) -> Scene {
        // Each row has its own stream, so rows do not depend on thread scheduling.
        let mut rng = StdRng::seed_from_u64(
            config
                .seed
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .wrapping_add(index as u64),
        );
        let s = config.size as f32;
        let count = match rng.random_range(0..100) {
            0..30 => 1,
            30..78 => 2,
            _ => 3,
        };
        let mut objects: Vec<Object> = Vec::new();
        let mut relation = None;
        let twins = count == 2 && rng.random_bool(0.12);
        while objects.len() < count {
            let size = if rng.random_bool(0.5) {
                Size::Small
            } else {
                Size::Large
            };
            let r = match size {
                Size::Small => rng.random_range(0.09..0.12) * s,
                Size::Large => rng.random_range(0.16..0.21) * s,
            };
            let (shape, colour) = match (twins, objects.first()) {
                (true, Some(first)) => (first.shape, first.colour),
                _ => (pick(&mut rng, &SHAPES), rng.random_range(0..COLOURS.len())),
            };
            let margin = r + 1.0;
            let candidate = Object {
                shape,
                colour,
                size,
                x: rng.random_range(margin..s - margin),
                y: rng.random_range(margin..s - margin),
                r,
                cell: (0, 0),
            };
            let candidate = Object {
                cell: grid_cell(candidate.x, candidate.y, s),
                ..candidate
            };
            let apart = objects.iter().all(|o| {
                let d = ((o.x - candidate.x).powi(2) + (o.y - candidate.y).powi(2)).sqrt();
                d > o.r + candidate.r + 2.0
            });
            // Two objects must stand clearly on one axis so that their relation is unambiguous.
            let clear = match objects.first() {
                Some(first) if count == 2 => {
                    let (dx, dy) = (candidate.x - first.x, candidate.y - first.y);
                    dx.abs().max(dy.abs()) > 0.3 * s
                        && (dx.abs() > 2.0 * dy.abs() || dy.abs() > 2.0 * dx.abs())
                }
                // "From left to right" must be unambiguous too.
                _ if count == 3 => objects.iter().all(|o| (o.x - candidate.x).abs() > 0.12 * s),
                _ => true,
            };
            if apart && clear {
                objects.push(candidate);
            } else if rng.random_bool(0.02) {
                // Rarely the placement is hopeless (two large objects): start over.
                objects.clear();
            }
        }
        if count == 2 {
            let (dx, dy) = (objects[1].x - objects[0].x, objects[1].y - objects[0].y);
            relation = Some(if dx.abs() > dy.abs() {
                if dx > 0.0 {
                    Relation::LeftOf
                } else {
                    Relation::RightOf
                }
            } else if dy > 0.0 {
                Relation::Above
            } else {
                Relation::Below
            });
        }
        let background = pick(&mut rng, &BACKGROUNDS);
        let portuguese = rng.random_bool(config.portuguese);
        let u: f64 = rng.random();
        let split = if u < config.test {
            2
        } else if u < config.test + config.validation {
            1
        } else {
            0
        };
        let mut scene = Scene {
            objects,
            background,
            relation,
            portuguese,
            split,
            captions: Vec::new(),
        };
        scene.captions = scene.describe(&mut rng);
        scene
    }

    /// Three distinct captions from varied templates.
    fn describe(&self, rng: &mut StdRng) -> Vec<String> {
        let mut captions: Vec<String> = Vec::new();
        let mut attempts = 0;
        while captions.len() < 3 && attempts < 40 {
            attempts += 1;
            let template = rng.random_range(0..6);
            let caption = if self.portuguese {
                self.caption_pt(template, rng)
            } else {
                self.caption_en(template, rng)
            };
            // A caption that only adds or drops the background phrase is not a new description.
            let fresh = captions
                .iter()
                .all(|c| !c.starts_with(&caption) && !caption.starts_with(c.as_str()));
            if fresh {
                captions.push(caption);
            }
        }
        captions
    }

    fn caption_en(&self, template: usize, rng: &mut StdRng) -> String {
        let with_size = rng.random_bool(0.6);
        let np = |o: &Object, size: bool| en_phrase(o, size);
        let mut text = match (self.objects.as_slice(), self.relation) {
            ([a], _) => {
                let place = position_en(a.cell);
                match template % 3 {
                    0 => format!("{} {place}", np(a, with_size)),
                    1 => format!("there is {} {place}", np(a, with_size)),
                    _ => format!("a picture of {}", np(a, true)),
                }
            }
            ([a, b], Some(rel)) if a.shape == b.shape && a.colour == b.colour => {
                let axis = if matches!(rel, Relation::LeftOf | Relation::RightOf) {
                    "side by side"
                } else {
                    "one above the other"
                };
                let colour = COLOURS[a.colour].en;
                match template % 3 {
                    0 => format!("two {colour} {} {axis}", a.shape.en_plural()),
                    1 => format!("a pair of {colour} {}", a.shape.en_plural()),
                    _ => format!("two identical {colour} {}", a.shape.en_plural()),
                }
            }
            ([a, b], Some(rel)) => match template % 4 {
                0 => format!(
                    "{} {} {}",
                    np(a, with_size),
                    rel.en(template),
                    np(b, with_size)
                ),
                1 => format!(
                    "{} {} {}",
                    np(b, with_size),
                    rel.inverse().en(template + 1),
                    np(a, with_size)
                ),
                2 => format!(
                    "there is {} {} {}",
                    np(a, with_size),
                    rel.en(template + 2),
                    np(b, with_size)
                ),
                _ => format!(
                    "{} and {}, the {} {} the {}",
                    np(a, with_size),
                    np(b, with_size),
                    a.shape.en(),
                    rel.en(0),
                    b.shape.en()
                ),
            },
            (objects, _) => {
                let mut sorted: Vec<&Object> = objects.iter().collect();
                sorted.sort_by(|p, q| p.x.total_cmp(&q.x));
                let names: Vec<String> = sorted.iter().map(|o| np(o, with_size)).collect();
                let list = format!("{}, {} and {}", names[0], names[1], names[2]);
                match template % 2 {
                    0 => format!("from left to right: {list}"),
                    _ => format!("three shapes, from left to right {list}"),
                }
            }
        };
        if rng.random_bool(0.35) {
            text.push(' ');
            text.push_str(self.background.en());
        }
        text
    }

    fn caption_pt(&self, template: usize, rng: &mut StdRng) -> String {
        let with_size = rng.random_bool(0.6);
        let np = |o: &Object, size: bool| pt_phrase(o, size);
        let mut text = match (self.objects.as_slice(), self.relation) {
            ([a], _) => {
                let place = position_pt(a.cell);
                match template % 3 {
                    0 => format!("{} {place}", np(a, with_size)),
                    1 => format!("há {} {place}", np(a, with_size)),
                    _ => format!("uma imagem de {}", np(a, true)),
                }
            }
            ([a, b], Some(rel)) if a.shape == b.shape && a.colour == b.colour => {
                let (_, plural, feminine) = a.shape.pt();
                let colour = COLOURS[a.colour].pt[if feminine { 3 } else { 2 }];
                let two = if feminine { "duas" } else { "dois" };
                let axis = if matches!(rel, Relation::LeftOf | Relation::RightOf) {
                    "lado a lado"
                } else {
                    "um acima do outro"
                };
                match template % 3 {
                    0 => format!("{two} {plural} {colour} {axis}"),
                    1 => format!("um par de {plural} {colour}"),
                    _ => format!("{two} {plural} {colour} iguais"),
                }
            }
            ([a, b], Some(rel)) => match template % 3 {
                0 => format!(
                    "{} {} {}",
                    np(a, with_size),
                    rel.pt(template),
                    np(b, with_size)
                ),
                1 => format!(
                    "{} {} {}",
                    np(b, with_size),
                    rel.inverse().pt(template + 1),
                    np(a, with_size)
                ),
                _ => format!(
                    "há {} {} {}",
                    np(a, with_size),
                    rel.pt(template + 2),
                    np(b, with_size)
                ),
            },
            (objects, _) => {
                let mut sorted: Vec<&Object> = objects.iter().collect();
                sorted.sort_by(|p, q| p.x.total_cmp(&q.x));
                let names: Vec<String> = sorted.iter().map(|o| np(o, with_size)).collect();
                let list = format!("{}, {} e {}", names[0], names[1], names[2]);
                match template % 2 {
                    0 => format!("da esquerda para a direita: {list}"),
                    _ => format!("três formas, da esquerda para a direita {list}"),
                }
            }
        };
        if rng.random_bool(0.35) {
            text.push(' ');
            text.push_str(self.background.pt());
        }
        text
    }

    /// Paints the scene: background, then each object with 4x4 supersampled edges.
    fn render(&self, config: &ShapesConfig, index: usize) -> image::RgbImage {
        let size = config.size;
        let mut rng = StdRng::seed_from_u64(config.seed ^ (index as u64).rotate_left(32) ^ 0xB5);
        let mut img = background(self.background, size, &mut rng);
        for o in &self.objects {
            let base = COLOURS[o.colour].rgb;
            let colour: [f32; 3] = std::array::from_fn(|c| {
                (base[c] as f32 + rng.random_range(-14.0..14.0)).clamp(0.0, 255.0)
            });
            let x0 = (o.x - o.r - 1.0).floor().max(0.0) as u32;
            let x1 = ((o.x + o.r + 1.0).ceil() as u32).min(size - 1);
            let y0 = (o.y - o.r - 1.0).floor().max(0.0) as u32;
            let y1 = ((o.y + o.r + 1.0).ceil() as u32).min(size - 1);
            for py in y0..=y1 {
                for px in x0..=x1 {
                    let mut inside = 0u32;
                    for sy in 0..4 {
                        for sx in 0..4 {
                            let x = (px as f32 + (sx as f32 + 0.5) / 4.0 - o.x) / o.r;
                            let y = (py as f32 + (sy as f32 + 0.5) / 4.0 - o.y) / o.r;
                            inside += u32::from(o.shape.contains(x, y));
                        }
                    }
                    if inside > 0 {
                        let alpha = inside as f32 / 16.0;
                        let p = img.get_pixel_mut(px, py);
                        for c in 0..3 {
                            p[c] = (p[c] as f32 * (1.0 - alpha) + colour[c] * alpha).round() as u8;
                        }
                    }
                }
            }
        }
        img
    }
}

fn article_en(word: &str) -> &'static str {
    if word.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

fn en_phrase(o: &Object, with_size: bool) -> String {
    let colour = COLOURS[o.colour].en;
    let words = if with_size {
        let size = match o.size {
            Size::Small => "small",
            Size::Large => "large",
        };
        format!("{size} {colour} {}", o.shape.en())
    } else {
        format!("{colour} {}", o.shape.en())
    };
    format!("{} {words}", article_en(&words))
}

fn pt_phrase(o: &Object, with_size: bool) -> String {
    let (noun, _, feminine) = o.shape.pt();
    let colour = COLOURS[o.colour].pt[usize::from(feminine)];
    let article = if feminine { "uma" } else { "um" };
    if with_size {
        let size = match (o.size, feminine) {
            (Size::Small, false) => "pequeno",
            (Size::Small, true) => "pequena",
            (Size::Large, _) => "grande",
        };
        format!("{article} {noun} {colour} {size}")
    } else {
        format!("{article} {noun} {colour}")
    }
}

/// The object's place in a 3x3 grid, (row, column), from its centre in a `size`-pixel image.
fn grid_cell(x: f32, y: f32, size: f32) -> (u8, u8) {
    let cell = |v: f32| ((v / size * 3.0) as u8).min(2);
    (cell(y), cell(x))
}

fn position_en(cell: (u8, u8)) -> &'static str {
    match cell {
        (0, 0) => "in the top left corner",
        (0, 1) => "at the top",
        (0, 2) => "in the top right corner",
        (1, 0) => "on the left",
        (1, 1) => "in the center",
        (1, 2) => "on the right",
        (2, 0) => "in the bottom left corner",
        (2, 1) => "at the bottom",
        _ => "in the bottom right corner",
    }
}

fn position_pt(cell: (u8, u8)) -> &'static str {
    match cell {
        (0, 0) => "no canto superior esquerdo",
        (0, 1) => "em cima",
        (0, 2) => "no canto superior direito",
        (1, 0) => "à esquerda",
        (1, 1) => "no centro",
        (1, 2) => "à direita",
        (2, 0) => "no canto inferior esquerdo",
        (2, 1) => "embaixo",
        _ => "no canto inferior direito",
    }
}

/// A muted colour: a random hue pulled towards a random grey, so objects stand out.
fn muted(rng: &mut StdRng) -> [f32; 3] {
    let grey: f32 = rng.random_range(70.0..200.0);
    std::array::from_fn(|_| grey * 0.7 + rng.random_range(0.0..255.0) * 0.3)
}

fn background(kind: Background, size: u32, rng: &mut StdRng) -> image::RgbImage {
    let a = muted(rng);
    let b = muted(rng);
    let period = rng.random_range(4..10) as f32;
    let diagonal = rng.random_bool(0.5);
    let noise_amplitude = match kind {
        Background::Noise => 45.0,
        _ => 6.0,
    };
    let mut img = image::RgbImage::new(size, size);
    for (x, y, p) in img.enumerate_pixels_mut() {
        let (xf, yf) = (x as f32, y as f32);
        let base = match kind {
            Background::Plain | Background::Noise => a,
            Background::Stripes => {
                let t = if diagonal { xf + yf } else { yf };
                if ((t / period) as u32).is_multiple_of(2) {
                    a
                } else {
                    b
                }
            }
            Background::Checker => {
                if ((xf / period) as u32 + (yf / period) as u32).is_multiple_of(2) {
                    a
                } else {
                    b
                }
            }
            Background::Gradient => {
                let t = if diagonal {
                    (xf + yf) / (2.0 * size as f32)
                } else {
                    xf / size as f32
                };
                std::array::from_fn(|c| a[c] * (1.0 - t) + b[c] * t)
            }
        };
        let n = rng.random_range(-noise_amplitude..noise_amplitude);
        *p = image::Rgb(std::array::from_fn(|c| {
            (base[c] + n).clamp(0.0, 255.0) as u8
        }));
    }
    img
}

/// The captions of `config.rows` scenes, without rendering them (a corpus for a tokenizer).
pub fn captions(config: &ShapesConfig) -> Vec<String> {
    (0..config.rows)
        .into_par_iter()
        .flat_map_iter(|i| Scene::generate(config, i).captions)
        .collect()
}

/// The metadata.jsonl record of a scene.
fn record(scene: &Scene, file_name: &str) -> serde_json::Value {
    let names = |f: &dyn Fn(&Object) -> &'static str| {
        scene.objects.iter().map(f).collect::<Vec<_>>().join(" ")
    };
    json!({
        "file_name": file_name,
        "text": scene.captions,
        "language": if scene.portuguese { "pt" } else { "en" },
        "split": SPLITS[scene.split],
        "objects": scene.objects.len(),
        "shapes": names(&|o| o.shape.en()),
        "colors": names(&|o| COLOURS[o.colour].en),
        "sizes": names(&|o| match o.size { Size::Small => "small", Size::Large => "large" }),
        "relation": scene.relation.map(Relation::name),
        "background": scene.background.name(),
    })
}

/// Renders `config.rows` scenes into `out` (created; must not hold a dataset already):
/// `images/NNNNNN.png` and `metadata.jsonl`, or the parquet shards when asked.
pub fn generate(config: &ShapesConfig, out: &Path) -> Result<ShapesSummary> {
    if config.rows == 0 {
        return Err(Error::Invalid(
            "a dataset needs at least one row (--rows)".into(),
        ));
    }
    if !(16..=1024).contains(&config.size) {
        return Err(Error::Invalid(format!(
            "image size {} is out of range: expected 16 to 1024 pixels",
            config.size
        )));
    }
    let valid_share = |v: f64| (0.0..=1.0).contains(&v);
    if !valid_share(config.portuguese)
        || !valid_share(config.validation)
        || !valid_share(config.test)
        || config.validation + config.test > 1.0
    {
        return Err(Error::Invalid(
            "shares must lie in [0, 1] and validation + test must not exceed 1".into(),
        ));
    }
    let metadata = out.join("metadata.jsonl");
    if metadata.exists() || out.join("data").exists() {
        return Err(Error::Invalid(format!(
            "{} already holds a dataset; choose an empty folder",
            out.display()
        )));
    }
    let images = out.join("images");
    if !config.parquet {
        std::fs::create_dir_all(&images).map_err(|e| Error::io(&images, e))?;
    }
    let bar = mirante::Progress::from(config.progress).steps(config.rows, "rendering scenes");
    let rows: Vec<(Scene, String, Vec<u8>)> = (0..config.rows)
        .into_par_iter()
        .map(|i| {
            let scene = Scene::generate(config, i);
            let mut png = Vec::new();
            scene
                .render(config, i)
                .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
                .map_err(|e| Error::Invalid(format!("cannot encode scene {i}: {e}")))?;
            let file_name = format!("images/{i:06}.png");
            if !config.parquet {
                let path = out.join(&file_name);
                std::fs::write(&path, &png).map_err(|e| Error::io(&path, e))?;
            }
            bar.inc(1);
            Ok((scene, file_name, png))
        })
        .collect::<Result<_>>()?;
    bar.finish_and_clear();
    let mut splits = [0; 3];
    let mut captions = 0;
    for (scene, _, _) in &rows {
        splits[scene.split] += 1;
        captions += scene.captions.len();
    }
    let parquet_files = if config.parquet {
        write_parquet(&rows, out)?
    } else {
        write_metadata(&rows, &metadata)?;
        Vec::new()
    };
    Ok(ShapesSummary {
        folder: out.to_path_buf(),
        rows: rows.len(),
        splits,
        captions,
        parquet_files,
    })
}

/// The imagefolder's metadata.jsonl, written beside and renamed: the folder holds a complete
/// metadata file or none.
fn write_metadata(rows: &[(Scene, String, Vec<u8>)], metadata: &Path) -> Result<()> {
    let partial = metadata.with_extension("jsonl.partial");
    let mut w = std::io::BufWriter::new(
        std::fs::File::create(&partial).map_err(|e| Error::io(&partial, e))?,
    );
    for (scene, file_name, _) in rows {
        writeln!(w, "{}", record(scene, file_name)).map_err(|e| Error::io(&partial, e))?;
    }
    w.into_inner()
        .map_err(|e| Error::io(&partial, e.into_error()))?
        .sync_all()
        .map_err(|e| Error::io(&partial, e))?;
    std::fs::rename(&partial, metadata).map_err(|e| Error::io(metadata, e))
}

/// `data/<split>-00000-of-00001.parquet` as `datasets` writes an image dataset: an `image`
/// struct of `bytes` and `path`, `text` a list of strings, the attributes as plain columns.
fn write_parquet(rows: &[(Scene, String, Vec<u8>)], out: &Path) -> Result<Vec<PathBuf>> {
    use arrow_array::builder::{ListBuilder, StringBuilder};
    use arrow_array::{ArrayRef, BinaryArray, Int64Array, RecordBatch, StringArray, StructArray};
    use arrow_schema::{DataType, Field};

    let data = out.join("data");
    std::fs::create_dir_all(&data).map_err(|e| Error::io(&data, e))?;
    let mut written = Vec::new();
    for (split, split_name) in SPLITS.iter().enumerate() {
        let part: Vec<&(Scene, String, Vec<u8>)> =
            rows.iter().filter(|(s, _, _)| s.split == split).collect();
        if part.is_empty() {
            continue;
        }
        let records: Vec<serde_json::Value> = part.iter().map(|(s, f, _)| record(s, f)).collect();
        let strings = |key: &str| -> ArrayRef {
            Arc::new(StringArray::from(
                records
                    .iter()
                    .map(|r| r[key].as_str().map(str::to_string))
                    .collect::<Vec<_>>(),
            ))
        };
        let image = StructArray::from(vec![
            (
                Arc::new(Field::new("bytes", DataType::Binary, true)),
                Arc::new(BinaryArray::from_iter_values(
                    part.iter().map(|(_, _, png)| png.as_slice()),
                )) as ArrayRef,
            ),
            (
                Arc::new(Field::new("path", DataType::Utf8, true)),
                Arc::new(StringArray::from_iter_values(
                    part.iter().map(|(_, f, _)| f.as_str()),
                )) as ArrayRef,
            ),
        ]);
        let mut text = ListBuilder::new(StringBuilder::new());
        for (scene, _, _) in &part {
            for caption in &scene.captions {
                text.values().append_value(caption);
            }
            text.append(true);
        }
        let objects: ArrayRef = Arc::new(Int64Array::from_iter_values(
            part.iter().map(|(s, _, _)| s.objects.len() as i64),
        ));
        let batch = RecordBatch::try_from_iter_with_nullable([
            ("image", Arc::new(image) as ArrayRef, true),
            ("text", Arc::new(text.finish()) as ArrayRef, true),
            ("language", strings("language"), true),
            ("split", strings("split"), true),
            ("objects", objects, true),
            ("shapes", strings("shapes"), true),
            ("colors", strings("colors"), true),
            ("sizes", strings("sizes"), true),
            ("relation", strings("relation"), true),
            ("background", strings("background"), true),
        ])
        .map_err(|e| Error::Invalid(format!("cannot assemble the {split_name} table: {e}")))?;
        // The features `datasets` reads back, so that `image` decodes as an Image (it uses them
        // only where the columns' Arrow types, nullability included, match its own).
        let value = |dtype: &str| json!({"dtype": dtype, "_type": "Value"});
        let features = json!({"info": {"features": {
            "image": {"_type": "Image"},
            "text": {"feature": value("string"), "_type": "List"},
            "language": value("string"),
            "split": value("string"),
            "objects": value("int64"),
            "shapes": value("string"),
            "colors": value("string"),
            "sizes": value("string"),
            "relation": value("string"),
            "background": value("string"),
        }}});
        let schema = Arc::new(batch.schema().as_ref().clone().with_metadata(
            std::collections::HashMap::from([("huggingface".to_string(), features.to_string())]),
        ));
        let batch = batch
            .with_schema(schema)
            .map_err(|e| Error::Invalid(format!("cannot assemble the {split_name} table: {e}")))?;
        let path = data.join(format!("{split_name}-00000-of-00001.parquet"));
        let partial = path.with_extension("parquet.partial");
        let file = std::fs::File::create(&partial).map_err(|e| Error::io(&partial, e))?;
        let mut writer = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None)
            .map_err(|e| Error::Invalid(format!("cannot write {}: {e}", path.display())))?;
        writer
            .write(&batch)
            .and_then(|_| writer.close().map(drop))
            .map_err(|e| Error::Invalid(format!("cannot write {}: {e}", path.display())))?;
        std::fs::rename(&partial, &path).map_err(|e| Error::io(&path, e))?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(rows: usize) -> ShapesConfig {
        ShapesConfig {
            rows,
            ..ShapesConfig::default()
        }
    }

    #[test]
    fn scenes_are_reproducible_and_relations_match_geometry() {
        let c = config(400);
        for i in 0..400 {
            let a = Scene::generate(&c, i);
            let b = Scene::generate(&c, i);
            assert_eq!(a.captions, b.captions);
            assert_eq!(a.captions.len(), 3, "scene {i}: {:?}", a.captions);
            if let (Some(rel), [p, q]) = (a.relation, a.objects.as_slice()) {
                let holds = match rel {
                    Relation::LeftOf => p.x < q.x,
                    Relation::RightOf => p.x > q.x,
                    Relation::Above => p.y < q.y,
                    Relation::Below => p.y > q.y,
                };
                assert!(holds, "scene {i}: {rel:?} {p:?} {q:?}");
            }
            for (k, o) in a.objects.iter().enumerate() {
                for other in &a.objects[k + 1..] {
                    let d = ((o.x - other.x).powi(2) + (o.y - other.y).powi(2)).sqrt();
                    assert!(d > o.r + other.r, "scene {i}: objects overlap");
                }
            }
        }
    }

    #[test]
    fn swapped_colours_give_different_captions_with_the_same_words() {
        // The compositional pairs the dataset exists for: same bag of words, different scene.
        let a = Object {
            shape: Shape::Triangle,
            colour: 0,
            size: Size::Small,
            x: 10.0,
            y: 30.0,
            r: 6.0,
            cell: (1, 0),
        };
        let b = Object {
            shape: Shape::Circle,
            colour: 2,
            x: 50.0,
            ..a
        };
        let scene = |objects: Vec<Object>| Scene {
            objects,
            background: Background::Plain,
            relation: Some(Relation::LeftOf),
            portuguese: false,
            split: 0,
            captions: Vec::new(),
        };
        let swapped = |o: Object, colour| Object { colour, ..o };
        let mut rng = StdRng::seed_from_u64(1);
        let one = scene(vec![a, b]).caption_en(0, &mut rng);
        let mut rng = StdRng::seed_from_u64(1);
        let two = scene(vec![swapped(a, 2), swapped(b, 0)]).caption_en(0, &mut rng);
        assert_ne!(one, two);
        let words = |s: &str| {
            let mut w: Vec<String> = s.split(' ').map(str::to_string).collect();
            w.sort();
            w
        };
        assert_eq!(words(&one), words(&two));
    }

    #[test]
    fn portuguese_adjectives_agree_with_the_noun() {
        let star = Object {
            shape: Shape::Star,
            colour: 0,
            size: Size::Small,
            x: 0.0,
            y: 0.0,
            r: 1.0,
            cell: (0, 0),
        };
        assert_eq!(pt_phrase(&star, true), "uma estrela vermelha pequena");
        let circle = Object {
            shape: Shape::Circle,
            ..star
        };
        assert_eq!(pt_phrase(&circle, true), "um círculo vermelho pequeno");
        assert_eq!(
            en_phrase(
                &Object {
                    colour: 5,
                    ..circle
                },
                false
            ),
            "an orange circle"
        );
    }

    #[test]
    fn shapes_cover_plausible_areas() {
        // Fraction of the unit square [-1, 1]^2 each shape fills: catches a broken test.
        for shape in SHAPES {
            let n = 200;
            let mut inside = 0;
            for i in 0..n {
                for j in 0..n {
                    let x = -1.0 + 2.0 * (i as f32 + 0.5) / n as f32;
                    let y = -1.0 + 2.0 * (j as f32 + 0.5) / n as f32;
                    inside += usize::from(shape.contains(x, y));
                }
            }
            let share = inside as f64 / (n * n) as f64;
            assert!((0.12..0.8).contains(&share), "{shape:?} fills {share}");
        }
    }

    #[test]
    fn writes_an_imagefolder_or_parquet_shards() {
        let dir = tempfile::tempdir().unwrap();
        let c = ShapesConfig {
            rows: 60,
            ..ShapesConfig::default()
        };
        let summary = generate(&c, dir.path()).unwrap();
        assert_eq!(summary.rows, 60);
        assert_eq!(summary.splits.iter().sum::<usize>(), 60);
        assert_eq!(summary.captions, 180);
        let metadata = std::fs::read_to_string(dir.path().join("metadata.jsonl")).unwrap();
        let first: serde_json::Value =
            serde_json::from_str(metadata.lines().next().unwrap()).unwrap();
        let file = first["file_name"].as_str().unwrap();
        let img = image::open(dir.path().join(file)).unwrap();
        assert_eq!((img.width(), img.height()), (64, 64));
        assert!(summary.parquet_files.is_empty());
        // A second run into the same folder is refused rather than mixing datasets.
        assert!(generate(&c, dir.path()).is_err());

        let shards = tempfile::tempdir().unwrap();
        let c = ShapesConfig { parquet: true, ..c };
        let summary = generate(&c, shards.path()).unwrap();
        assert_eq!(summary.parquet_files.len(), 3);
        assert!(!shards.path().join("images").exists());
        assert!(!shards.path().join("metadata.jsonl").exists());
    }
}
