//! `kiln-worker render`: one job on this machine, without broker or bucket.
//! Writes `{rank}.png` and `metadata.json` into `--out`.

use crate::engine::{self, RenderContext, RenderInputs};
use crate::rerank;
use crate::runtime::output::{self, EncodedImage, Metadata};
use anyhow::Context;
use kiln_protocol::{Engine as EngineKind, JobMessage, JobSpec, Limits, ParamsDto};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;
use uuid::Uuid;

/// Flags of `kiln-worker render`.
#[derive(Debug, Clone, clap::Args)]
pub struct RenderArgs {
    #[arg(long)]
    pub engine: EngineKind,
    #[arg(long)]
    pub prompt: String,
    /// Directory to write the images and metadata.json into (created).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, env = "KILN_MODELS", default_value = "models")]
    pub models: PathBuf,
    /// auto, cpu, cuda or cuda:K.
    #[arg(long, default_value = "auto")]
    pub device: String,
    #[arg(long)]
    pub width: Option<u32>,
    #[arg(long)]
    pub height: Option<u32>,
    #[arg(long)]
    pub steps: Option<u32>,
    /// Default: drawn at random (and written to metadata.json).
    #[arg(long)]
    pub seed: Option<u64>,
    #[arg(long)]
    pub candidates: Option<u32>,
    #[arg(long)]
    pub keep: Option<u32>,
    #[arg(long)]
    pub lr: Option<f64>,
    #[arg(long)]
    pub cutn: Option<u32>,
    #[arg(long)]
    pub cut_pow: Option<f64>,
    /// A local image file to start from (vqgan-clip).
    #[arg(long)]
    pub init_image: Option<PathBuf>,
    #[arg(long)]
    pub init_weight: Option<f64>,
    #[arg(long)]
    pub temperature: Option<f64>,
    #[arg(long)]
    pub top_k: Option<u32>,
    #[arg(long)]
    pub supercondition_factor: Option<f64>,
    #[arg(long)]
    pub step_delay_ms: Option<u32>,
}

pub fn render(args: RenderArgs) -> anyhow::Result<()> {
    let device = crate::parse_device(&args.device)?;
    let dto = ParamsDto {
        width: args.width,
        height: args.height,
        steps: args.steps,
        seed: args.seed,
        candidates: args.candidates,
        keep: args.keep,
        lr: args.lr,
        cutn: args.cutn,
        cut_pow: args.cut_pow,
        // The job names an upload; locally the file itself is the input.
        init_image: args.init_image.as_ref().map(|_| "local".to_string()),
        init_weight: args.init_weight,
        temperature: args.temperature,
        top_k: args.top_k,
        supercondition_factor: args.supercondition_factor,
        step_delay_ms: args.step_delay_ms,
    };
    let seed = rand::random::<u64>() % (kiln_protocol::spec::MAX_SEED + 1);
    let spec = JobSpec::parse(args.engine, &args.prompt, &dto, seed, &Limits::default())
        .map_err(|e| anyhow::anyhow!("invalid job: {e}"))?;
    let mut inputs = RenderInputs::default();
    if let Some(path) = &args.init_image {
        let img = image::open(path).with_context(|| format!("reading {}", path.display()))?;
        inputs.init_image = Some(img.to_rgb8());
    }

    let t0 = Instant::now();
    let engine = engine::load(args.engine, &args.models, device).with_context(|| {
        format!(
            "loading engine {} from {}",
            args.engine,
            args.models.display()
        )
    })?;
    let scorer = crate::rerank::load_scorer(&args.models, device)?;
    eprintln!(
        "loaded {} in {:.1}s",
        args.engine,
        t0.elapsed().as_secs_f64()
    );

    let t1 = Instant::now();
    let tty = std::io::stderr().is_terminal();
    let mut progress = |step: u32, total: u32| {
        if tty {
            eprint!("\rstep {step}/{total}");
            let _ = std::io::stderr().flush();
        } else if step == total {
            eprint!("{total} steps");
        }
    };
    let never = || false;
    let mut ctx = RenderContext {
        progress: &mut progress,
        cancelled: &never,
    };
    let candidates = engine.render(&spec, &inputs, &mut ctx)?;
    eprintln!();
    let ranked = rerank::rerank(
        scorer.as_deref(),
        spec.prompt(),
        candidates,
        spec.params().keep(),
    )?;
    let seconds = t1.elapsed().as_secs_f64();
    let images = output::encode_all(&spec, &ranked)?;

    write_out(&args.out, &spec, &images, seconds)?;
    eprintln!("rendered in {seconds:.2}s");
    Ok(())
}

/// Writes `{rank}.png` and `metadata.json` of `spec`'s `images` into `out`.
fn write_out(
    out: &Path,
    spec: &JobSpec,
    images: &[EncodedImage],
    seconds: f64,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut results = Vec::new();
    for img in images {
        let path = out.join(format!("{}.png", img.rank));
        std::fs::write(&path, &img.png).with_context(|| format!("writing {}", path.display()))?;
        let score = img
            .score
            .map(|s| format!(" score {s:.3}"))
            .unwrap_or_default();
        println!("{} (seed {}{score})", path.display(), img.seed);
        results.push(img.result(path.display().to_string()));
    }
    // A local render has no batch or job: nil ids, tenant and worker "local".
    let job = JobMessage::new(Uuid::nil(), Uuid::nil(), "local", 1, spec.clone());
    let meta = Metadata::new(&job, "local", seconds, results);
    let path = out.join("metadata.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&meta)?)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
