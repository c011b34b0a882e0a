//! A pixel-level reader of toy-world images: which colour and which shape
//! the main object of an image has. It knows the world's palette and
//! geometry and nothing else, so it judges a generated image without the
//! CLIP that may have guided it.
//!
//! Every pixel takes the nearest palette colour; the colours covering a
//! fifth or more of the border are the background; the largest connected
//! region of other pixels that does not touch the border is the main
//! object. Its colour is its most common one; its shape follows from how
//! much of its bounding box it fills, whether its middle is empty (a ring)
//! and where its widest row lies (a triangle's is at the bottom).

use super::world::{Colour, Shape};
use image::RgbImage;
use serde::Serialize;

/// What the analyser reads in an image.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Reading {
    /// The main object's colour; `None` when no object was found.
    pub colour: Option<Colour>,
    /// The main object's shape; `None` when no object was found or the
    /// region fits no shape.
    pub shape: Option<Shape>,
    /// The main object's share of the image.
    pub area: f64,
}

/// Regions smaller than this many pixels are not objects.
const MIN_AREA: usize = 12;

/// Reads the main object of `img`.
pub fn read(img: &RgbImage) -> Reading {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let labels: Vec<Colour> = img.pixels().map(|p| Colour::nearest(p.0)).collect();
    let background = border_colours(&labels, w, h);
    let fg: Vec<bool> = labels.iter().map(|c| !background.contains(c)).collect();
    let Some(region) = largest_region(&fg, w, h) else {
        return Reading {
            colour: None,
            shape: None,
            area: 0.0,
        };
    };
    let mut counts = [0usize; 8];
    for &i in &region {
        counts[Colour::ALL
            .iter()
            .position(|c| *c == labels[i])
            .unwrap_or(0)] += 1;
    }
    let best = (0..8).max_by_key(|&k| counts[k]).unwrap_or(0);
    Reading {
        colour: Some(Colour::ALL[best]),
        shape: classify(&region, w),
        area: region.len() as f64 / (w * h) as f64,
    }
}

/// The share of `img`'s pixels whose nearest palette colour is `colour`.
pub fn colour_share(img: &RgbImage, colour: Colour) -> f64 {
    let n = img
        .pixels()
        .filter(|p| Colour::nearest(p.0) == colour)
        .count();
    n as f64 / (img.width() * img.height()).max(1) as f64
}

/// The colours that cover at least a fifth of the border.
fn border_colours(labels: &[Colour], w: usize, h: usize) -> Vec<Colour> {
    let mut counts = std::collections::HashMap::new();
    let mut total = 0;
    for y in 0..h {
        for x in 0..w {
            if x == 0 || y == 0 || x == w - 1 || y == h - 1 {
                *counts.entry(labels[y * w + x]).or_insert(0usize) += 1;
                total += 1;
            }
        }
    }
    counts
        .into_iter()
        .filter(|&(_, n)| n * 5 >= total)
        .map(|(c, _)| c)
        .collect()
}

/// The largest 4-connected region of `fg` that does not touch the border
/// and holds at least [`MIN_AREA`] pixels, as pixel indices.
fn largest_region(fg: &[bool], w: usize, h: usize) -> Option<Vec<usize>> {
    let mut seen = vec![false; fg.len()];
    let mut best: Option<Vec<usize>> = None;
    for start in 0..fg.len() {
        if !fg[start] || seen[start] {
            continue;
        }
        seen[start] = true;
        let mut stack = vec![start];
        let mut region = Vec::new();
        let mut touches = false;
        while let Some(i) = stack.pop() {
            region.push(i);
            let (x, y) = (i % w, i / w);
            touches |= x == 0 || y == 0 || x == w - 1 || y == h - 1;
            let mut visit = |j: usize| {
                if fg[j] && !seen[j] {
                    seen[j] = true;
                    stack.push(j);
                }
            };
            if x > 0 {
                visit(i - 1);
            }
            if x + 1 < w {
                visit(i + 1);
            }
            if y > 0 {
                visit(i - w);
            }
            if y + 1 < h {
                visit(i + w);
            }
        }
        if !touches
            && region.len() >= MIN_AREA
            && best.as_ref().is_none_or(|b| region.len() > b.len())
        {
            best = Some(region);
        }
    }
    best
}

/// The shape of a region (pixel indices in an image `w` wide).
fn classify(region: &[usize], w: usize) -> Option<Shape> {
    let xs = || region.iter().map(|i| i % w);
    let ys = || region.iter().map(|i| i / w);
    let (x0, x1) = (xs().min()?, xs().max()?);
    let (y0, y1) = (ys().min()?, ys().max()?);
    let (bw, bh) = (x1 - x0 + 1, y1 - y0 + 1);
    let fill = region.len() as f64 / (bw * bh) as f64;
    let aspect = bw.max(bh) as f64 / bw.min(bh) as f64;
    if aspect > 1.6 {
        return None;
    }
    let inside: std::collections::HashSet<usize> = region.iter().copied().collect();
    // A ring: the middle fifth of the box is mostly empty.
    let (cx, cy) = (x0 + bw / 2, y0 + bh / 2);
    let (rx, ry) = ((bw / 10).max(1), (bh / 10).max(1));
    let mut middle = 0;
    let mut empty = 0;
    for y in cy.saturating_sub(ry)..=cy + ry {
        for x in cx.saturating_sub(rx)..=cx + rx {
            middle += 1;
            if !inside.contains(&(y * w + x)) {
                empty += 1;
            }
        }
    }
    if empty * 2 > middle {
        return Some(Shape::Ring);
    }
    if fill >= 0.88 {
        return Some(Shape::Square);
    }
    if fill >= 0.68 {
        return Some(Shape::Circle);
    }
    // Triangle or star: a triangle's widest row is its base, a star's is
    // the line of its arms, a third of the way down.
    let mut widths = vec![0usize; bh];
    for y in ys() {
        widths[y - y0] += 1;
    }
    let widest = (0..bh).max_by_key(|&r| (widths[r], r)).unwrap_or(0);
    if widest as f64 >= 0.7 * (bh - 1) as f64 {
        Some(Shape::Triangle)
    } else {
        Some(Shape::Star)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::toy::world::{Scene, SIDE};

    #[test]
    fn it_reads_the_colour_and_shape_of_drawn_single_shape_scenes() {
        let mut wrong = Vec::new();
        let n = 600;
        for seed in 0..n {
            let colour = Colour::ALL[seed as usize % 8];
            let shape = Shape::ALL[(seed as usize / 8) % 5];
            let scene = Scene::single(colour, shape, seed);
            let r = read(&scene.draw(SIDE));
            if r.colour != Some(colour) || r.shape != Some(shape) {
                wrong.push((seed, colour, shape, r));
            }
        }
        assert!(
            wrong.len() * 100 <= n as usize,
            "{} of {n} misread: {wrong:?}",
            wrong.len()
        );
    }

    #[test]
    fn the_share_of_a_colour_counts_its_pixels() {
        let mut img = RgbImage::from_pixel(4, 4, image::Rgb(Colour::White.rgb()));
        for x in 0..4 {
            img.put_pixel(x, 0, image::Rgb([200, 40, 30]));
        }
        assert_eq!(colour_share(&img, Colour::Red), 0.25);
        assert_eq!(colour_share(&img, Colour::White), 0.75);
        assert_eq!(colour_share(&img, Colour::Blue), 0.0);
    }

    #[test]
    fn an_image_without_an_object_reads_as_none() {
        let img = RgbImage::from_pixel(SIDE, SIDE, image::Rgb([245, 245, 245]));
        assert_eq!(read(&img).colour, None);
        // Noise is no shape either: no region of one colour class stands out
        // away from the border with a shape's outline.
        let mut noise = img.clone();
        for (i, p) in noise.pixels_mut().enumerate() {
            let v = (i.wrapping_mul(2654435761) >> 7) as u8;
            *p = image::Rgb([v, v.wrapping_mul(3), v.wrapping_mul(7)]);
        }
        let r = read(&noise);
        assert!(r.area < 0.05 || r.shape.is_none(), "{r:?}");
    }
}
