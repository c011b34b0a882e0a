//! The generated world: scenes of one or two flat shapes on a plain or
//! two-tone background, drawn from a seed, and captions that describe them
//! in natural phrasing ("a large red circle on a white background", "a
//! small blue triangle at the top left").
//!
//! Everything is a pure function of the seed, so any number of (image,
//! caption) pairs exist without a data set, and a held-out seed range gives
//! held-out scenes.

use image::{Rgb, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The side in pixels of the toy models' images.
pub const SIDE: u32 = 64;

/// The world's colours, each a flat RGB value far from the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Colour {
    Red,
    Green,
    Blue,
    Yellow,
    Purple,
    Orange,
    White,
    Black,
}

impl Colour {
    pub const ALL: [Colour; 8] = [
        Colour::Red,
        Colour::Green,
        Colour::Blue,
        Colour::Yellow,
        Colour::Purple,
        Colour::Orange,
        Colour::White,
        Colour::Black,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Colour::Red => "red",
            Colour::Green => "green",
            Colour::Blue => "blue",
            Colour::Yellow => "yellow",
            Colour::Purple => "purple",
            Colour::Orange => "orange",
            Colour::White => "white",
            Colour::Black => "black",
        }
    }

    pub fn rgb(self) -> [u8; 3] {
        match self {
            Colour::Red => [220, 30, 30],
            Colour::Green => [30, 170, 60],
            Colour::Blue => [30, 60, 220],
            Colour::Yellow => [240, 220, 30],
            Colour::Purple => [140, 50, 180],
            Colour::Orange => [250, 140, 20],
            Colour::White => [245, 245, 245],
            Colour::Black => [15, 15, 15],
        }
    }

    /// The colour whose RGB value is nearest to `px` (squared distance).
    pub fn nearest(px: [u8; 3]) -> Colour {
        let d = |c: Colour| {
            c.rgb()
                .iter()
                .zip(px)
                .map(|(&a, b)| (a as i32 - b as i32).pow(2))
                .sum::<i32>()
        };
        Colour::ALL
            .into_iter()
            .min_by_key(|&c| d(c))
            .expect("the palette is not empty")
    }

    /// Parses a colour's name.
    pub fn parse(s: &str) -> Option<Colour> {
        Colour::ALL.into_iter().find(|c| c.name() == s)
    }
}

/// The world's shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    Circle,
    Square,
    Triangle,
    Star,
    Ring,
}

impl Shape {
    pub const ALL: [Shape; 5] = [
        Shape::Circle,
        Shape::Square,
        Shape::Triangle,
        Shape::Star,
        Shape::Ring,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Shape::Circle => "circle",
            Shape::Square => "square",
            Shape::Triangle => "triangle",
            Shape::Star => "star",
            Shape::Ring => "ring",
        }
    }

    pub fn parse(s: &str) -> Option<Shape> {
        Shape::ALL.into_iter().find(|c| c.name() == s)
    }

    /// Whether the point `(x, y)`, in units of the shape's radius from its
    /// centre (`y` pointing down), is inside the shape.
    pub fn contains(self, x: f64, y: f64) -> bool {
        let r2 = x * x + y * y;
        // Every shape lies within the square's corners (radius 0.85·√2).
        if r2 > 2.0 * 0.85 * 0.85 {
            return false;
        }
        match self {
            Shape::Circle => r2 <= 1.0,
            Shape::Ring => (0.36..=1.0).contains(&r2),
            // Half-side 0.85: about the circle's area.
            Shape::Square => x.abs() <= 0.85 && y.abs() <= 0.85,
            // Equilateral, pointing up, inscribed in the unit circle.
            Shape::Triangle => y <= 0.5 && x.abs() <= (y + 1.0) / 1.5 * 0.866,
            Shape::Star => in_polygon(&*STAR, x, y),
        }
    }
}

/// A five-pointed star's outline, point up: outer radius 1, inner 0.45.
static STAR: std::sync::LazyLock<[(f64, f64); 10]> = std::sync::LazyLock::new(star_points);

fn star_points() -> [(f64, f64); 10] {
    let mut pts = [(0.0, 0.0); 10];
    for (i, p) in pts.iter_mut().enumerate() {
        let r = if i % 2 == 0 { 1.0 } else { 0.45 };
        let a = std::f64::consts::PI * (i as f64 / 5.0 - 0.5);
        *p = (r * a.cos(), r * a.sin());
    }
    pts
}

/// Even-odd point-in-polygon test.
fn in_polygon(pts: &[(f64, f64)], x: f64, y: f64) -> bool {
    let mut inside = false;
    let mut j = pts.len() - 1;
    for i in 0..pts.len() {
        let (xi, yi) = pts[i];
        let (xj, yj) = pts[j];
        if (yi > y) != (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi {
            inside = !inside;
        }
        j = i;
    }
    inside
}

/// How big a shape is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Size {
    Small,
    Large,
}

impl Size {
    pub fn name(self) -> &'static str {
        match self {
            Size::Small => "small",
            Size::Large => "large",
        }
    }

    /// The radius as a fraction of the image side.
    fn radius(self) -> f64 {
        match self {
            Size::Small => 0.15,
            Size::Large => 0.3,
        }
    }
}

/// Where a shape sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Place {
    Centre,
    Left,
    Right,
    Top,
    Bottom,
    TopLeft,
    TopRight,
    BottomLeft,
    BottomRight,
}

impl Place {
    pub const ALL: [Place; 9] = [
        Place::Centre,
        Place::Left,
        Place::Right,
        Place::Top,
        Place::Bottom,
        Place::TopLeft,
        Place::TopRight,
        Place::BottomLeft,
        Place::BottomRight,
    ];

    /// The phrase a caption uses ("at the top left").
    pub fn phrase(self) -> &'static str {
        match self {
            Place::Centre => "in the centre",
            Place::Left => "on the left",
            Place::Right => "on the right",
            Place::Top => "at the top",
            Place::Bottom => "at the bottom",
            Place::TopLeft => "at the top left",
            Place::TopRight => "at the top right",
            Place::BottomLeft => "at the bottom left",
            Place::BottomRight => "at the bottom right",
        }
    }

    /// The centre as fractions of the side.
    fn centre(self) -> (f64, f64) {
        let (a, b) = (0.27, 0.73);
        match self {
            Place::Centre => (0.5, 0.5),
            Place::Left => (a, 0.5),
            Place::Right => (b, 0.5),
            Place::Top => (0.5, a),
            Place::Bottom => (0.5, b),
            Place::TopLeft => (a, a),
            Place::TopRight => (b, a),
            Place::BottomLeft => (a, b),
            Place::BottomRight => (b, b),
        }
    }
}

/// One shape of a scene.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Object {
    pub shape: Shape,
    pub colour: Colour,
    pub size: Size,
    pub place: Place,
    /// Offset of the centre from its place and scale of the radius (small
    /// variations that make no two scenes alike).
    pub jitter: (f64, f64, f64),
}

/// A scene's background.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Background {
    Plain(Colour),
    /// Two halves, `first` on the left (`vertical`) or on top.
    Split {
        first: Colour,
        second: Colour,
        vertical: bool,
    },
}

impl Background {
    pub fn colours(self) -> Vec<Colour> {
        match self {
            Background::Plain(c) => vec![c],
            Background::Split { first, second, .. } => vec![first, second],
        }
    }

    fn at(self, u: f64, v: f64) -> Colour {
        match self {
            Background::Plain(c) => c,
            Background::Split {
                first,
                second,
                vertical,
            } => {
                let t = if vertical { u } else { v };
                if t < 0.5 {
                    first
                } else {
                    second
                }
            }
        }
    }

    fn phrase(self) -> String {
        match self {
            Background::Plain(c) => format!("on a {} background", c.name()),
            Background::Split { first, second, .. } => {
                format!("on a {} and {} background", first.name(), second.name())
            }
        }
    }
}

/// A scene: a background and one or two shapes.
#[derive(Debug, Clone, PartialEq)]
pub struct Scene {
    pub background: Background,
    pub objects: Vec<Object>,
}

/// Samples per pixel along each axis.
const SAMPLES: u32 = 3;

/// Two places that leave two small shapes apart.
const PAIRS: [(Place, Place); 4] = [
    (Place::Left, Place::Right),
    (Place::Top, Place::Bottom),
    (Place::TopLeft, Place::BottomRight),
    (Place::BottomLeft, Place::TopRight),
];

impl Scene {
    /// The scene of `seed`.
    pub fn from_seed(seed: u64) -> Scene {
        Scene::random(&mut ChaCha8Rng::seed_from_u64(seed))
    }

    /// A scene of one shape with the given colour and shape (size, place
    /// and background drawn from `seed`).
    pub fn single(colour: Colour, shape: Shape, seed: u64) -> Scene {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let background = background(&mut rng, &[colour]);
        let size = if rng.gen_bool(0.5) {
            Size::Large
        } else {
            Size::Small
        };
        let place = if size == Size::Large {
            Place::Centre
        } else {
            Place::ALL[rng.gen_range(0..Place::ALL.len())]
        };
        Scene {
            background,
            objects: vec![object(&mut rng, shape, colour, size, place)],
        }
    }

    /// A random scene: one shape (three times in four) or two.
    pub fn random(rng: &mut impl Rng) -> Scene {
        let pick_colour = |rng: &mut dyn rand::RngCore| Colour::ALL[rng.gen_range(0..8)];
        let pick_shape = |rng: &mut dyn rand::RngCore| Shape::ALL[rng.gen_range(0..5)];
        if rng.gen_bool(0.75) {
            let colour = pick_colour(rng);
            let shape = pick_shape(rng);
            return Scene::single(colour, shape, rng.gen());
        }
        let (a, b) = PAIRS[rng.gen_range(0..PAIRS.len())];
        let (a, b) = if rng.gen_bool(0.5) { (a, b) } else { (b, a) };
        let c1 = pick_colour(rng);
        let c2 = loop {
            let c = pick_colour(rng);
            if c != c1 {
                break c;
            }
        };
        let background = background(rng, &[c1, c2]);
        let (s1, s2) = (pick_shape(rng), pick_shape(rng));
        Scene {
            background,
            objects: vec![
                object(rng, s1, c1, Size::Small, a),
                object(rng, s2, c2, Size::Small, b),
            ],
        }
    }

    /// The scene drawn at `side × side` pixels, each pixel the mean of
    /// 3 × 3 samples (smooth edges).
    pub fn draw(&self, side: u32) -> RgbImage {
        let n = (side * SAMPLES) as f64;
        RgbImage::from_fn(side, side, |px, py| {
            // The pixel's samples lie within [u0, u1] × [v0, v1].
            let u0 = ((px * SAMPLES) as f64 + 0.5) / n;
            let v0 = ((py * SAMPLES) as f64 + 0.5) / n;
            let span = (SAMPLES - 1) as f64 / n;
            match self.uniform_colour((u0, u0 + span), (v0, v0 + span)) {
                Some(c) => Rgb(c.rgb()),
                None => self.sampled_pixel(px, py, side),
            }
        })
    }

    /// Pixel `(px, py)` of the scene drawn at `side × side`: the mean of its
    /// 3 × 3 samples.
    fn sampled_pixel(&self, px: u32, py: u32, side: u32) -> Rgb<u8> {
        const S: u32 = SAMPLES;
        let n = (side * S) as f64;
        let mut acc = [0u32; 3];
        for sy in 0..S {
            for sx in 0..S {
                let u = ((px * S + sx) as f64 + 0.5) / n;
                let v = ((py * S + sy) as f64 + 0.5) / n;
                let rgb = self.colour_at(u, v).rgb();
                for k in 0..3 {
                    acc[k] += rgb[k] as u32;
                }
            }
        }
        Rgb(acc.map(|a| ((a + S * S / 2) / (S * S)) as u8))
    }

    /// The colour of every point of `[u0, u1] × [v0, v1]` when it is one
    /// (no shape reaches the rectangle and the background is one colour
    /// over it); `None` otherwise. It lets [`Scene::draw`] skip the
    /// samples of pixels far from every shape, with the same pixels.
    fn uniform_colour(&self, (u0, u1): (f64, f64), (v0, v1): (f64, f64)) -> Option<Colour> {
        for o in &self.objects {
            let (cx, cy) = o.place.centre();
            let (x, y) = (cx + o.jitter.0, cy + o.jitter.1);
            // Beyond this a shape holds no point (see `Shape::contains`).
            let reach = o.size.radius() * o.jitter.2 * 1.21;
            if u1 >= x - reach && u0 <= x + reach && v1 >= y - reach && v0 <= y + reach {
                return None;
            }
        }
        match self.background {
            Background::Plain(c) => Some(c),
            Background::Split {
                first,
                second,
                vertical,
            } => {
                let (t0, t1) = if vertical { (u0, u1) } else { (v0, v1) };
                if t1 < 0.5 {
                    Some(first)
                } else if t0 >= 0.5 {
                    Some(second)
                } else {
                    None
                }
            }
        }
    }

    fn colour_at(&self, u: f64, v: f64) -> Colour {
        for o in self.objects.iter().rev() {
            let (cx, cy) = o.place.centre();
            let r = o.size.radius() * o.jitter.2;
            let x = (u - cx - o.jitter.0) / r;
            let y = (v - cy - o.jitter.1) / r;
            if o.shape.contains(x, y) {
                return o.colour;
            }
        }
        self.background.at(u, v)
    }

    /// A caption in one of several phrasings, chosen by `rng`: every shape's
    /// colour and kind, and sometimes its size, its place and the background.
    pub fn caption(&self, rng: &mut impl Rng) -> String {
        let noun = |o: &Object, size: bool| {
            let words = if size {
                format!("{} {} {}", o.size.name(), o.colour.name(), o.shape.name())
            } else {
                format!("{} {}", o.colour.name(), o.shape.name())
            };
            format!("{} {words}", article(&words))
        };
        let mut text = match self.objects.as_slice() {
            [o] => {
                let mut t = noun(o, rng.gen_bool(0.5));
                if rng.gen_bool(0.4) {
                    t = format!("{t} {}", o.place.phrase());
                }
                t
            }
            [a, b] => {
                if rng.gen_bool(0.5) {
                    format!(
                        "{} {} and {} {}",
                        noun(a, false),
                        a.place.phrase(),
                        noun(b, false),
                        b.place.phrase()
                    )
                } else {
                    format!("{} and {}", noun(a, false), noun(b, false))
                }
            }
            _ => unreachable!("a scene holds one or two shapes"),
        };
        if rng.gen_bool(0.4) {
            text = format!("{text} {}", self.background.phrase());
        }
        text
    }

    /// The plainest caption: "a red circle" (the first shape only).
    pub fn short_caption(&self) -> String {
        attribute_caption(self.objects[0].colour, self.objects[0].shape)
    }
}

/// The caption of every [`mosaic`].
pub const MOSAIC_CAPTION: &str = "a mosaic of tiles";

/// A mosaic as wide as `scenes`' images, in square tiles of `tile` pixels,
/// each copied from a place drawn by `rng` in one of `scenes`: pieces of
/// flat colour and edge with no whole shape, like the images a VQGAN
/// decodes from codes drawn at random. CLIP training pairs them with
/// [`MOSAIC_CAPTION`], so that scattered pieces of a colour do not match a
/// caption of a shape in that colour.
pub fn mosaic(scenes: &[RgbImage], tile: u32, rng: &mut impl Rng) -> RgbImage {
    let side = scenes[0].width();
    let mut out = RgbImage::new(side, side);
    for ty in (0..side).step_by(tile as usize) {
        for tx in (0..side).step_by(tile as usize) {
            let src = &scenes[rng.gen_range(0..scenes.len())];
            let (sx, sy) = (
                rng.gen_range(0..=side - tile),
                rng.gen_range(0..=side - tile),
            );
            for dy in 0..tile.min(side - ty) {
                for dx in 0..tile.min(side - tx) {
                    out.put_pixel(tx + dx, ty + dy, *src.get_pixel(sx + dx, sy + dy));
                }
            }
        }
    }
    out
}

/// "a red circle", "an orange star".
pub fn attribute_caption(colour: Colour, shape: Shape) -> String {
    let words = format!("{} {}", colour.name(), shape.name());
    format!("{} {words}", article(&words))
}

fn article(words: &str) -> &'static str {
    if words.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

fn object(rng: &mut impl Rng, shape: Shape, colour: Colour, size: Size, place: Place) -> Object {
    Object {
        shape,
        colour,
        size,
        place,
        jitter: (
            rng.gen_range(-0.03..0.03),
            rng.gen_range(-0.03..0.03),
            rng.gen_range(0.9..1.1),
        ),
    }
}

/// A background none of whose colours is in `avoid`: plain three times in
/// four (white or black half the time), otherwise two halves.
fn background(rng: &mut impl Rng, avoid: &[Colour]) -> Background {
    let pick = |rng: &mut dyn rand::RngCore, also: Option<Colour>| loop {
        let c = if rng.gen_bool(0.5) {
            [Colour::White, Colour::Black][rng.gen_range(0..2)]
        } else {
            Colour::ALL[rng.gen_range(0..8)]
        };
        if !avoid.contains(&c) && Some(c) != also {
            return c;
        }
    };
    let first = pick(rng, None);
    if rng.gen_bool(0.75) {
        Background::Plain(first)
    } else {
        let second = pick(rng, Some(first));
        Background::Split {
            first,
            second,
            vertical: rng.gen_bool(0.5),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drawing_skips_only_samples_that_change_nothing() {
        for seed in 0..300 {
            let scene = Scene::from_seed(seed);
            let img = scene.draw(SIDE);
            for (px, py, p) in img.enumerate_pixels() {
                assert_eq!(
                    *p,
                    scene.sampled_pixel(px, py, SIDE),
                    "scene {seed} ({px}, {py})"
                );
            }
        }
    }

    #[test]
    fn a_mosaic_is_made_of_tiles_of_its_scenes() {
        let scenes: Vec<RgbImage> = (0..3).map(|i| Scene::from_seed(i).draw(SIDE)).collect();
        let m = mosaic(&scenes, 4, &mut ChaCha8Rng::seed_from_u64(1));
        assert_eq!(m, mosaic(&scenes, 4, &mut ChaCha8Rng::seed_from_u64(1)));
        assert_ne!(m, mosaic(&scenes, 4, &mut ChaCha8Rng::seed_from_u64(2)));
        let tile = |img: &RgbImage, x: u32, y: u32| -> Vec<Rgb<u8>> {
            (0..16)
                .map(|k| *img.get_pixel(x + k % 4, y + k / 4))
                .collect()
        };
        for (tx, ty) in [(0, 0), (60, 0), (28, 36), (60, 60)] {
            let found = scenes.iter().any(|s| {
                (0..=SIDE - 4).any(|y| (0..=SIDE - 4).any(|x| tile(s, x, y) == tile(&m, tx, ty)))
            });
            assert!(found, "the tile at ({tx}, {ty}) comes from no scene");
        }
    }

    #[test]
    fn a_seed_fixes_the_scene_its_pixels_and_its_captions() {
        let a = Scene::from_seed(42);
        assert_eq!(a, Scene::from_seed(42));
        assert_eq!(a.draw(SIDE), Scene::from_seed(42).draw(SIDE));
        let cap = |s: &Scene| s.caption(&mut ChaCha8Rng::seed_from_u64(1));
        assert_eq!(cap(&a), cap(&Scene::from_seed(42)));
        let distinct: std::collections::HashSet<String> =
            (0..200).map(|s| cap(&Scene::from_seed(s))).collect();
        assert!(distinct.len() > 150, "{} distinct captions", distinct.len());
    }

    #[test]
    fn captions_name_every_shape_and_its_colour() {
        for seed in 0..300 {
            let scene = Scene::from_seed(seed);
            let text = scene.caption(&mut ChaCha8Rng::seed_from_u64(seed));
            for o in &scene.objects {
                let words = format!("{} {}", o.colour.name(), o.shape.name());
                assert!(text.contains(&words), "{text:?} lacks {words:?}");
                assert!(!scene.background.colours().contains(&o.colour));
            }
            assert!(text.starts_with("a ") || text.starts_with("an "), "{text}");
        }
        assert_eq!(
            attribute_caption(Colour::Orange, Shape::Star),
            "an orange star"
        );
    }

    #[test]
    fn a_drawn_shape_has_its_colour_and_the_background_its_own() {
        let scene = Scene {
            background: Background::Plain(Colour::White),
            objects: vec![object(
                &mut ChaCha8Rng::seed_from_u64(0),
                Shape::Ring,
                Colour::Blue,
                Size::Large,
                Place::Centre,
            )],
        };
        let img = scene.draw(SIDE);
        let at = |x, y| Colour::nearest(img.get_pixel(x, y).0);
        assert_eq!(at(0, 0), Colour::White);
        // A ring is hollow: blue around, white in the middle.
        assert_eq!(at(32, 32), Colour::White);
        assert_eq!(at(32, 32 - 15), Colour::Blue);
        assert!(Shape::Star.contains(0.0, -0.95) && !Shape::Star.contains(0.4, -0.6));
        assert!(Shape::Triangle.contains(0.0, 0.0) && !Shape::Triangle.contains(0.0, 0.6));
    }
}
