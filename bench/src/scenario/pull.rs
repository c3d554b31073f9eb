//! Cold pulls: the image (with all its names) is removed before every pull, so each run
//! fetches, verifies and unpacks every layer.

use std::time::Duration;

use crate::resources::Watched;
use crate::results::PullResult;
use crate::run::Run;
use crate::stats::Summary;

/// Gives a runtime that collects removed content in the background a moment, so one
/// run's deletion does not overlap the next run's pull.
const BETWEEN_RUNS: Duration = Duration::from_millis(500);

/// Pulls `image` cold `runs` times, sampling the daemon meanwhile. The image is left
/// as it was found: removed at the end if it was absent before.
pub async fn run(
    run: &Run,
    watched: &Watched,
    image: &str,
    runs: usize,
) -> anyhow::Result<PullResult> {
    let present_before = run.image_id(image).await?.is_some();
    let sampler = watched.sample();
    let mut samples = Vec::new();
    for _ in 0..runs {
        if let Some(id) = run.image_id(image).await? {
            run.remove_image(&id).await?;
            tokio::time::sleep(BETWEEN_RUNS).await;
        }
        // From here until the next removal the image is ours to clean up.
        let took = run.pull(image).await;
        if let Some(id) = run.image_id(image).await?
            && !present_before
        {
            run.created.image(&id);
        }
        samples.push(took?);
    }
    if !present_before && let Some(id) = run.image_id(image).await? {
        run.remove_image(&id).await?;
        run.created.image_gone(&id);
    }
    let daemon = sampler.stop().await;
    Ok(PullResult {
        image: image.to_string(),
        runs_ms: samples.iter().map(|d| d.as_secs_f64() * 1e3).collect(),
        summary: Summary::of(&samples),
        daemon,
        daemon_after: watched.daemon_idle().await,
    })
}
