//! Image preprocessing identical to transformers' PIL backend (`CLIPImageProcessorPil`,
//! `SiglipImageProcessorPil`): conversion to RGB with transparency composited onto white, PIL's
//! resampling (separable convolution, 8-bit fixed-point arithmetic, as Pillow's `Resample.c`),
//! center crop, rescale and normalisation, driven by `preprocessor_config.json`.

use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};

/// Resampling filters, numbered as PIL's `Image.Resampling`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resample {
    Nearest = 0,
    Lanczos = 1,
    Bilinear = 2,
    Bicubic = 3,
}

impl Resample {
    fn from_pil(code: u32) -> Result<Self> {
        Ok(match code {
            0 => Resample::Nearest,
            1 => Resample::Lanczos,
            2 => Resample::Bilinear,
            3 => Resample::Bicubic,
            other => {
                return Err(Error::InvalidArgument(format!(
                    "resample code {other} is not supported (0 nearest, 1 lanczos, 2 bilinear, 3 bicubic)"
                )));
            }
        })
    }

    fn support(self) -> f64 {
        match self {
            Resample::Nearest => 0.0,
            Resample::Bilinear => 1.0,
            Resample::Bicubic => 2.0,
            Resample::Lanczos => 3.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Resample::Nearest => f64::from(x < 0.5),
            Resample::Bilinear => (1.0 - x).max(0.0),
            Resample::Bicubic => {
                const A: f64 = -0.5;
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
            Resample::Lanczos => {
                let sinc = |v: f64| {
                    if v == 0.0 {
                        1.0
                    } else {
                        let p = v * std::f64::consts::PI;
                        p.sin() / p
                    }
                };
                if x < 3.0 {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }
        }
    }
}

/// Target size of the resize step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResizeTo {
    /// Scale so that the shorter side has this length (CLIP).
    ShortestEdge(u32),
    /// Exact height and width (SigLIP).
    Exact { height: u32, width: u32 },
}

/// The image processor settings of a checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageProcessor {
    pub resize: Option<(ResizeTo, Resample)>,
    pub center_crop: Option<(u32, u32)>,
    pub rescale: Option<f64>,
    pub normalize: Option<([f32; 3], [f32; 3])>,
    pub convert_rgb: bool,
    /// What an image given to this processor may cost.
    pub limits: crate::imageio::ImageLimits,
}

/// The most pixels a processed image may have: a model input is far smaller. Only a
/// checkpoint that resizes by the shortest edge without cropping can ask for more (an extreme
/// aspect ratio), and it is refused rather than allocated.
const MAX_OUTPUT_PIXELS: u64 = 4096 * 4096;

#[derive(Debug, Deserialize)]
struct RawSize {
    shortest_edge: Option<u32>,
    height: Option<u32>,
    width: Option<u32>,
}

#[derive(Debug, Deserialize)]
struct RawProcessor {
    do_resize: Option<bool>,
    size: Option<serde_json::Value>,
    resample: Option<u32>,
    do_center_crop: Option<bool>,
    crop_size: Option<serde_json::Value>,
    do_rescale: Option<bool>,
    rescale_factor: Option<f64>,
    do_normalize: Option<bool>,
    image_mean: Option<Vec<f32>>,
    image_std: Option<Vec<f32>>,
    do_convert_rgb: Option<bool>,
}

fn parse_size(v: &serde_json::Value, path: &Path) -> Result<RawSize> {
    match v {
        // Old checkpoints store a bare integer (CLIP: shortest edge).
        serde_json::Value::Number(n) => Ok(RawSize {
            shortest_edge: n.as_u64().map(|n| n as u32),
            height: None,
            width: None,
        }),
        _ => serde_json::from_value(v.clone())
            .map_err(|e| Error::config(path, format!("bad size {v}: {e}"))),
    }
}

fn three(v: Option<Vec<f32>>, default: [f32; 3], what: &str, path: &Path) -> Result<[f32; 3]> {
    match v {
        None => Ok(default),
        Some(v) if v.len() == 3 => Ok([v[0], v[1], v[2]]),
        Some(v) => Err(Error::config(
            path,
            format!("{what} needs 3 values, got {}", v.len()),
        )),
    }
}

impl ImageProcessor {
    /// Reads `preprocessor_config.json`, or the `image_processor` section of
    /// `processor_config.json` (the layout transformers 5 writes), from a checkpoint folder.
    pub fn from_folder(folder: &Path, defaults: &ImageProcessor) -> Result<Self> {
        let pre = folder.join("preprocessor_config.json");
        let proc_cfg = folder.join("processor_config.json");
        let (path, value) = if pre.is_file() {
            (pre.clone(), read_json(&pre)?)
        } else if proc_cfg.is_file() {
            let v = read_json(&proc_cfg)?;
            let section = v
                .get("image_processor")
                .cloned()
                .ok_or_else(|| Error::config(&proc_cfg, "has no \"image_processor\" section"))?;
            (proc_cfg.clone(), section)
        } else {
            return Ok(defaults.clone());
        };
        let raw: RawProcessor =
            serde_json::from_value(value).map_err(|e| Error::config(&path, e.to_string()))?;
        let mut out = defaults.clone();
        if let Some(false) = raw.do_resize {
            out.resize = None;
        } else if let Some(size) = &raw.size {
            let size = parse_size(size, &path)?;
            let resample = match raw.resample {
                Some(r) => Resample::from_pil(r)?,
                None => out.resize.map_or(Resample::Bilinear, |r| r.1),
            };
            let to = match (size.shortest_edge, size.height, size.width) {
                (Some(s), _, _) => ResizeTo::ShortestEdge(s),
                (None, Some(height), Some(width)) => ResizeTo::Exact { height, width },
                _ => {
                    return Err(Error::config(
                        &path,
                        "size needs shortest_edge or height and width",
                    ));
                }
            };
            out.resize = Some((to, resample));
        } else if let (Some(r), Some((to, _))) = (raw.resample, out.resize) {
            out.resize = Some((to, Resample::from_pil(r)?));
        }
        if let Some(false) = raw.do_center_crop {
            out.center_crop = None;
        } else if let Some(crop) = &raw.crop_size {
            let c = parse_size(crop, &path)?;
            out.center_crop = match (c.height, c.width, c.shortest_edge) {
                (Some(h), Some(w), _) => Some((h, w)),
                (_, _, Some(s)) => Some((s, s)),
                _ => return Err(Error::config(&path, "crop_size needs height and width")),
            };
        } else if raw.do_center_crop == Some(true) && out.center_crop.is_none() {
            return Err(Error::config(&path, "do_center_crop without crop_size"));
        }
        if let Some(false) = raw.do_rescale {
            out.rescale = None;
        } else if let Some(f) = raw.rescale_factor {
            out.rescale = Some(f);
        }
        if let Some(false) = raw.do_normalize {
            out.normalize = None;
        } else {
            let (m, s) = out.normalize.unwrap_or(([0.5; 3], [0.5; 3]));
            out.normalize = Some((
                three(raw.image_mean, m, "image_mean", &path)?,
                three(raw.image_std, s, "image_std", &path)?,
            ));
        }
        if let Some(c) = raw.do_convert_rgb {
            out.convert_rgb = c;
        }
        Ok(out)
    }

    /// Output (height, width) of [`ImageProcessor::process`].
    pub fn output_size(&self, height: u32, width: u32) -> (u32, u32) {
        let (mut h, mut w) = (height, width);
        if let Some((to, _)) = self.resize {
            (h, w) = resize_output_size(to, h, w);
        }
        if let Some((ch, cw)) = self.center_crop {
            (h, w) = (ch, cw);
        }
        (h, w)
    }

    /// Decodes image bytes ([`crate::imageio::decode`], within this processor's pixel limit)
    /// and returns channel-first f32 pixel values (3 x H x W).
    pub fn process_bytes(&self, bytes: &[u8], source: &str) -> Result<(Vec<f32>, u32, u32)> {
        let img = crate::imageio::decode(bytes, source, self.limits.max_pixels)?;
        self.process(&to_rgb(img), source)
    }

    /// Resizes, crops, rescales and normalises an RGB image into channel-first f32 values.
    /// Only the part of the resized image that the crop keeps is computed, so an extreme aspect
    /// ratio (a million pixels by one) costs no more than the model input.
    pub fn process(&self, rgb: &image::RgbImage, source: &str) -> Result<(Vec<f32>, u32, u32)> {
        let (in_w, in_h) = rgb.dimensions();
        let (rh, rw) = match self.resize {
            Some((to, _)) => resize_output_size(to, in_h, in_w),
            None => (in_h, in_w),
        };
        let (h, w) = self.center_crop.unwrap_or((rh, rw));
        if h as u64 * w as u64 > MAX_OUTPUT_PIXELS {
            return Err(Error::Image {
                source_name: source.to_string(),
                detail: format!(
                    "{in_w} x {in_h} pixels would be resized to {rw} x {rh}, above the \
                     {MAX_OUTPUT_PIXELS} pixels a model input may have"
                ),
            });
        }
        // transformers' `center_crop`: offsets `(size - crop) // 2`, zeros where the crop
        // reaches past the image.
        let top = (rh as i64 - h as i64) / 2;
        let left = (rw as i64 - w as i64) / 2;
        let rows = top.max(0) as u32..(top + h as i64).min(rh as i64).max(0) as u32;
        let cols = left.max(0) as u32..(left + w as i64).min(rw as i64).max(0) as u32;
        let kept = match self.resize {
            Some((_, filter)) => resize_window(rgb, (rw, rh), (cols.clone(), rows.clone()), filter),
            None => image::imageops::crop_imm(
                rgb,
                cols.start,
                rows.start,
                cols.len() as u32,
                rows.len() as u32,
            )
            .to_image(),
        };
        let plane = (w * h) as usize;
        let mut out = vec![0f32; 3 * plane];
        let channel = |c: usize, v: u8| {
            // transformers: astype(float64) * scale, cast to float32, then (x - mean) / std.
            let mut v = match self.rescale {
                Some(s) => (v as f64 * s) as f32,
                None => v as f32,
            };
            if let Some((mean, std)) = self.normalize {
                v = (v - mean[c]) / std[c];
            }
            v
        };
        let zero = [channel(0, 0), channel(1, 0), channel(2, 0)];
        for c in 0..3 {
            out[c * plane..(c + 1) * plane].fill(zero[c]);
        }
        let (dy, dx) = (
            (rows.start as i64 - top) as usize,
            (cols.start as i64 - left) as usize,
        );
        for (x, y, p) in kept.enumerate_pixels() {
            let i = (y as usize + dy) * w as usize + x as usize + dx;
            for c in 0..3 {
                out[c * plane + i] = channel(c, p[c]);
            }
        }
        Ok((out, h, w))
    }
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::config(path, e.to_string()))
}

/// transformers' `get_resize_output_image_size(default_to_square=False)`: the short side becomes
/// `s`, the long side `int(s * long / short)`.
fn resize_output_size(to: ResizeTo, height: u32, width: u32) -> (u32, u32) {
    match to {
        ResizeTo::Exact { height, width } => (height, width),
        ResizeTo::ShortestEdge(s) => {
            let (short, long) = if width <= height {
                (width, height)
            } else {
                (height, width)
            };
            let new_long = (s as f64 * long as f64 / short as f64) as u32;
            if width <= height {
                (new_long, s)
            } else {
                (s, new_long)
            }
        }
    }
}

/// Converts any decoded image to RGB as transformers does: images with transparency are
/// composited onto an opaque white background with Pillow's `alpha_composite` arithmetic;
/// grayscale is replicated.
pub fn to_rgb(img: image::DynamicImage) -> image::RgbImage {
    if !img.color().has_alpha() {
        return img.into_rgb8();
    }
    let rgba = img.into_rgba8();
    let mut out = image::RgbImage::new(rgba.width(), rgba.height());
    for (o, p) in out.pixels_mut().zip(rgba.pixels()) {
        let a = p[3] as u32;
        if a == 0 {
            *o = image::Rgb([255, 255, 255]);
            continue;
        }
        // Pillow AlphaComposite.c with dst = (255, 255, 255, 255), 7 bits of precision.
        const PB: u32 = 7;
        let blend = 255 * (255 - a);
        let outa255 = a * 255 + blend;
        let coef1 = a * 255 * 255 * (1 << PB) / outa255;
        let coef2 = 255 * (1 << PB) - coef1;
        let shift_div255 = |v: u32| ((v >> 8) + v) >> 8;
        for c in 0..3 {
            let tmp = p[c] as u32 * coef1 + 255 * coef2;
            o[c] = (shift_div255(tmp + (0x80 << PB)) >> PB) as u8;
        }
    }
    out
}

/// Pillow's fixed-point precision for 8-bit resampling.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for the output pixels `range` of a
/// resize from `in_size` to `out_size`: per output pixel, the first input index, the number of
/// taps, and fixed-point weights (each pixel's are independent of the others').
fn coefficients(
    in_size: u32,
    out_size: u32,
    filter: Resample,
    range: std::ops::Range<u32>,
) -> (Vec<(usize, usize)>, Vec<i32>, usize) {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let ksize = (support.ceil() as usize) * 2 + 1;
    let mut bounds = Vec::with_capacity(range.len());
    let mut kk = vec![0i32; range.len() * ksize];
    for (i, xx) in range.enumerate() {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let n = xmax.saturating_sub(xmin);
        let weights: Vec<f64> = (0..n)
            .map(|x| filter.weight((x as f64 + xmin as f64 - center + 0.5) * ss))
            .collect();
        let total: f64 = weights.iter().sum();
        for (x, w) in weights.iter().enumerate() {
            let w = if total != 0.0 { w / total } else { *w };
            let fixed = w * (1u32 << PRECISION_BITS) as f64;
            kk[i * ksize + x] = if w < 0.0 {
                (-0.5 + fixed) as i32
            } else {
                (0.5 + fixed) as i32
            };
        }
        bounds.push((xmin, n));
    }
    (bounds, kk, ksize)
}

fn clip8(v: i64) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// The window `(cols, rows)` of Pillow's `Image.resize((width, height), filter)` of an RGB
/// image, computed as Pillow computes the whole (a horizontal pass over the input rows the
/// vertical pass needs, then a vertical pass, each skipped when that size is unchanged; nearest
/// neighbour samples at pixel centres) without computing the rest.
fn resize_window(
    img: &image::RgbImage,
    (width, height): (u32, u32),
    (cols, rows): (std::ops::Range<u32>, std::ops::Range<u32>),
    filter: Resample,
) -> image::RgbImage {
    let (in_w, in_h) = img.dimensions();
    let (w, h) = (cols.len(), rows.len());
    if w == 0 || h == 0 {
        return image::RgbImage::new(w as u32, h as u32);
    }
    if filter == Resample::Nearest {
        let source = |i: u32, size: u32, out: u32| {
            (((i as f64 + 0.5) * size as f64 / out as f64) as u32).min(size - 1)
        };
        let (c0, r0) = (cols.start, rows.start);
        return image::RgbImage::from_fn(w as u32, h as u32, |x, y| {
            *img.get_pixel(source(c0 + x, in_w, width), source(r0 + y, in_h, height))
        });
    }
    let src = img.as_raw();
    let stride = in_w as usize * 3;
    // The input rows each output row reads (identity when the height is unchanged).
    let (mut vb, vk, vks) = if height != in_h {
        coefficients(in_h, height, filter, rows.clone())
    } else {
        (
            rows.clone().map(|y| (y as usize, 1)).collect(),
            Vec::new(),
            0,
        )
    };
    let first = vb[0].0;
    let last = vb[h - 1].0 + vb[h - 1].1;
    for b in &mut vb {
        b.0 -= first;
    }
    // Horizontal pass over those rows, for the window's columns only.
    let current: Vec<u8> = if width != in_w {
        let (hb, hk, hks) = coefficients(in_w, width, filter, cols.clone());
        let mut tmp = vec![0u8; (last - first) * w * 3];
        for y in 0..(last - first) {
            let row = &src[(y + first) * stride..(y + first + 1) * stride];
            let out_row = &mut tmp[y * w * 3..(y + 1) * w * 3];
            for (xx, &(xmin, n)) in hb.iter().enumerate() {
                let k = &hk[xx * hks..xx * hks + n];
                let mut ss = [1i64 << (PRECISION_BITS - 1); 3];
                for (x, &wt) in k.iter().enumerate() {
                    let p = &row[(xmin + x) * 3..(xmin + x) * 3 + 3];
                    for c in 0..3 {
                        ss[c] += p[c] as i64 * wt as i64;
                    }
                }
                for c in 0..3 {
                    out_row[xx * 3 + c] = clip8(ss[c]);
                }
            }
        }
        tmp
    } else {
        let (a, b) = (cols.start as usize * 3, cols.end as usize * 3);
        (first..last)
            .flat_map(|y| &src[y * stride + a..y * stride + b])
            .copied()
            .collect()
    };
    let out = if height != in_h {
        let stride = w * 3;
        let mut out = vec![0u8; h * stride];
        for (yy, &(ymin, n)) in vb.iter().enumerate() {
            let k = &vk[yy * vks..yy * vks + n];
            let mut acc = vec![1i64 << (PRECISION_BITS - 1); stride];
            for (y, &wt) in k.iter().enumerate() {
                let row = &current[(ymin + y) * stride..(ymin + y + 1) * stride];
                for (a, &v) in acc.iter_mut().zip(row) {
                    *a += v as i64 * wt as i64;
                }
            }
            for (o, a) in out[yy * stride..(yy + 1) * stride].iter_mut().zip(acc) {
                *o = clip8(a);
            }
        }
        out
    } else {
        current
    };
    image::RgbImage::from_raw(w as u32, h as u32, out)
        .unwrap_or_else(|| image::RgbImage::new(w as u32, h as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(width: u32, height: u32) -> image::RgbImage {
        image::RgbImage::from_fn(width, height, |x, y| {
            let v = x.wrapping_mul(2_654_435_761) ^ y.wrapping_mul(40_503);
            image::Rgb([v as u8, (v >> 8) as u8, (v >> 16) as u8])
        })
    }

    #[test]
    fn a_window_of_the_resize_equals_the_same_pixels_of_the_whole_resize() {
        for (img, (width, height)) in [
            (noise(300, 40), (1680, 224)),
            (noise(40, 300), (224, 1680)),
            (noise(500, 400), (280, 224)),
            (noise(224, 100), (224, 300)),
            (noise(100, 224), (300, 224)),
        ] {
            for filter in [
                Resample::Bicubic,
                Resample::Bilinear,
                Resample::Lanczos,
                Resample::Nearest,
            ] {
                let whole = resize_window(&img, (width, height), (0..width, 0..height), filter);
                let (cols, rows) = (width / 3..width / 3 + 150, height / 4..height / 4 + 100);
                let window =
                    resize_window(&img, (width, height), (cols.clone(), rows.clone()), filter);
                let expected = image::imageops::crop_imm(&whole, cols.start, rows.start, 150, 100);
                assert_eq!(window, expected.to_image(), "{filter:?} {width}x{height}");
            }
        }
    }

    #[test]
    fn an_extreme_aspect_ratio_costs_no_more_than_the_model_input() {
        let processor = ImageProcessor {
            resize: Some((ResizeTo::ShortestEdge(224), Resample::Bicubic)),
            center_crop: Some((224, 224)),
            rescale: Some(1.0 / 255.0),
            normalize: None,
            convert_rgb: true,
            limits: crate::imageio::ImageLimits::default(),
        };
        // Resized whole, this line (a smooth ramp) would be 224 million pixels wide.
        let line = image::RgbImage::from_fn(1_000_000, 1, |x, _| {
            image::Rgb([(x / 3922) as u8, 100, 200])
        });
        let (pixels, h, w) = processor.process(&line, "line").unwrap();
        assert_eq!((h, w, pixels.len()), (224, 224, 3 * 224 * 224));
        // Every row is the ramp's middle stretch: red about 127 (of 255), green 100.
        for y in 0..224 {
            let (red, green) = (pixels[y * 224 + 112], pixels[224 * 224 + y * 224 + 112]);
            assert!((red * 255.0 - 127.0).abs() < 1.5, "{red}");
            assert!((green * 255.0 - 100.0).abs() < 0.01, "{green}");
        }

        // Without a crop the whole resize is the input: refused, not allocated.
        let uncropped = ImageProcessor {
            center_crop: None,
            ..processor
        };
        let err = uncropped.process(&line, "line").unwrap_err().to_string();
        assert!(err.contains("above the 16777216 pixels"), "{err}");
    }
}
