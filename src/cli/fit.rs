use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

pub use embedtune::training::args::FitArgs;
use embedtune::training::{self, FitOutcome, Observer, StepRecord};
use indicatif::ProgressBar;

use super::progress;

/// Progress bar, messages and Ctrl-C.
struct Cli {
    bar: Option<ProgressBar>,
    stop: Arc<AtomicBool>,
}

impl Observer for Cli {
    fn on_start(&mut self, start: usize, total: usize) {
        let bar = progress::bar(total as u64, "steps");
        bar.set_position(start as u64);
        self.bar = Some(bar);
    }
    fn on_step(&mut self, r: &StepRecord) {
        if let Some(bar) = &self.bar {
            bar.set_position(r.step as u64);
            let mut msg = format!(
                "loss {:.4} align {:.4} uniform {:.4} lr {:.2e} {:.1} sent/s",
                r.loss, r.align, r.uniform, r.lr, r.sentences_per_s
            );
            if let Some(e) = &r.eval {
                if let Some(s) = e.sts_spearman {
                    msg += &format!(" sts {s:.2}");
                }
                bar.println(format!(
                    "step {}: held-out alignment {:.4}, uniformity {:.4}{}",
                    r.step,
                    e.heldout_alignment,
                    e.heldout_uniformity,
                    e.sts_spearman
                        .map(|s| format!(", STS Spearman {s:.2}"))
                        .unwrap_or_default()
                ));
            }
            bar.set_message(msg);
        }
    }
    fn on_message(&mut self, message: &str) {
        match &self.bar {
            Some(bar) => bar.println(message),
            None => eprintln!("{message}"),
        }
    }
    fn should_stop(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

pub fn run(args: FitArgs) -> anyhow::Result<()> {
    let (job, recipe) = args.job()?;
    if let Some(line) = recipe {
        eprintln!("{line}");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    // Ctrl-C or SIGTERM (timeout, docker stop, Slurm) checkpoints and stops;
    // a second one while the checkpoint is written exits at once.
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            embedtune::output::remove_temporaries();
            std::process::exit(130);
        }
    })?;
    let mut cli = Cli { bar: None, stop };
    let outcome = training::fit(&job, &mut cli)?;
    if let Some(bar) = &cli.bar {
        bar.finish_and_clear();
    }
    match outcome {
        FitOutcome::Interrupted { step, out } => {
            eprintln!(
                "interrupted: checkpoint at step {step} saved; continue with the same command and --resume ({})",
                out.display()
            );
            std::process::exit(130);
        }
        FitOutcome::Done(r) => {
            println!(
                "saved {} (weights of step {})",
                args.out.display(),
                r.saved_step
            );
            super::print_before_after(
                &r.before,
                &r.after,
                r.sts_before.as_ref(),
                r.sts_after.as_ref(),
            );
        }
    }
    Ok(())
}
