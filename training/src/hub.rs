//! Resolving a model name to a checkpoint folder: a local folder in Hugging Face layout, or a
//! Hub id (`org/name`, optionally `org/name@revision`) looked up in the Hugging Face cache
//! (`HF_HUB_CACHE`, else `HF_HOME/hub`, else `~/.cache/huggingface/hub`; layout
//! `models--org--name/snapshots/<commit>/`) and downloaded into it with hf-hub when the network
//! allows and `HF_HUB_OFFLINE` is not set, from `HF_ENDPOINT` when set (a mirror), else
//! huggingface.co.

use std::path::{Path, PathBuf};

use hf_hub::{Cache, Repo, RepoType};

use crate::error::{Error, Result};

/// Files a checkpoint may have, besides its weights. Missing optional files are fine.
const CHECKPOINT_FILES: [&str; 6] = [
    "config.json",
    "tokenizer.json",
    "spiece.model",
    "tokenizer_config.json",
    "preprocessor_config.json",
    "processor_config.json",
];

/// The Hugging Face cache directory from the environment.
pub fn hub_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("HF_HUB_CACHE") {
        return PathBuf::from(dir);
    }
    if let Some(home) = std::env::var_os("HF_HOME") {
        return PathBuf::from(home).join("hub");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".cache").join("huggingface").join("hub")
}

fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| !v.is_empty() && v != "0")
}

fn repo(id: &str) -> Repo {
    match id.split_once('@') {
        Some((name, rev)) => {
            Repo::with_revision(name.to_string(), RepoType::Model, rev.to_string())
        }
        None => Repo::model(id.to_string()),
    }
}

/// Splits `org/name[@revision]` and checks both parts, so that neither can name a path outside
/// the cache: names are letters, digits, `.`, `_` and `-` (as the Hub allows), revisions are
/// branch, tag or commit names (those characters and `/`), and neither holds `..`.
pub fn hub_id(locator: &str) -> Result<(&str, &str)> {
    let (id, revision) = locator.split_once('@').unwrap_or((locator, "main"));
    let bad = |why: &str| {
        Error::InvalidArgument(format!(
            "'{locator}' is not a valid Hugging Face Hub id: {why} (expected org/name or \
             org/name@revision)"
        ))
    };
    let name_ok = |part: &str| {
        (1..=96).contains(&part.len())
            && part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            && !part.contains("..")
            && !part.starts_with(['.', '-'])
    };
    match id.split_once('/') {
        Some((org, name)) if name_ok(org) && name_ok(name) => {}
        _ => {
            return Err(bad(
                "the id must be two names of letters, digits, '.', '_' or '-'",
            ));
        }
    }
    let revision_ok = (1..=255).contains(&revision.len())
        && revision
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b))
        && !revision.contains("..")
        && !revision.contains("//")
        && !revision.starts_with(['/', '.'])
        && !revision.ends_with('/');
    if !revision_ok {
        return Err(bad(&format!(
            "revision '{revision}' is not a branch, tag or commit name"
        )));
    }
    Ok((id, revision))
}

/// A file name a repository's index lists (a weight shard), which must stay in its folder.
fn plain_file_name(name: &str) -> std::result::Result<&str, String> {
    let plain = !name.is_empty() && !name.contains(['/', '\\']) && name != "." && name != "..";
    if plain {
        Ok(name)
    } else {
        Err(format!(
            "the weight index names '{name}', which is not a plain file name"
        ))
    }
}

/// The folder holding the checkpoint named `model`: `model` itself if it is a directory, else
/// the Hub id's snapshot in the cache, downloading missing files when allowed.
pub fn resolve_model(model: &str) -> Result<PathBuf> {
    resolve_model_with(model, true)
}

/// [`resolve_model`], downloading only when `downloads` (else the cache alone is used, as with
/// `HF_HUB_OFFLINE`): hosts that run their users' statements turn downloads off.
pub fn resolve_model_with(model: &str, downloads: bool) -> Result<PathBuf> {
    let as_path = Path::new(model);
    if as_path.is_dir() {
        return Ok(as_path.to_path_buf());
    }
    let looks_like_id = model.split('@').next().is_some_and(|id| {
        id.split('/').count() == 2 && !id.starts_with('.') && !id.starts_with('/')
    });
    if !looks_like_id {
        return Err(Error::MissingFile {
            path: as_path.to_path_buf(),
            detail: "not a folder, nor a Hugging Face Hub id of the form org/name".into(),
        });
    }
    let (id, revision) = hub_id(model)?;
    let cache_dir = hub_cache_dir();
    let repo_dir = cache_dir.join(format!("models--{}", id.replace('/', "--")));
    // A commit hash names its snapshot directly; branch and tag names go through refs/.
    let pinned = repo_dir
        .join("snapshots")
        .join(revision)
        .join("config.json");
    let cached = if pinned.is_file() {
        Some(pinned)
    } else {
        Cache::new(cache_dir.clone())
            .repo(repo(model))
            .get("config.json")
    };
    let download_error = if !downloads {
        "downloads are turned off here".to_string()
    } else if offline() {
        "HF_HUB_OFFLINE is set".to_string()
    } else {
        match download(model, &cache_dir) {
            Ok(folder) => return Ok(folder),
            Err(e) => e,
        }
    };
    match cached.as_deref().and_then(Path::parent) {
        Some(folder) => Ok(folder.to_path_buf()),
        None => Err(Error::MissingFile {
            path: repo_dir,
            detail: format!(
                "model '{model}' is not in the Hugging Face cache and cannot be downloaded ({download_error})"
            ),
        }),
    }
}

/// Downloads (or finds up to date in the cache) the checkpoint files of `model`.
fn download(model: &str, cache_dir: &Path) -> std::result::Result<PathBuf, String> {
    use std::io::IsTerminal;
    let mut builder =
        hf_hub::api::sync::ApiBuilder::from_cache(Cache::new(cache_dir.to_path_buf()))
            .with_progress(std::io::stderr().is_terminal());
    if let Some(endpoint) = std::env::var("HF_ENDPOINT").ok().filter(|e| !e.is_empty()) {
        builder = builder.with_endpoint(endpoint.trim_end_matches('/').to_string());
    }
    let api = builder.build().map_err(|e| e.to_string())?;
    let repo = api.repo(repo(model));
    let config = repo.get("config.json").map_err(|e| e.to_string())?;
    for file in CHECKPOINT_FILES.iter().skip(1) {
        let _ = repo.get(file); // optional files: absent ones are not an error
    }
    if repo.get("model.safetensors").is_err() {
        let index = repo
            .get("model.safetensors.index.json")
            .map_err(|e| e.to_string())?;
        let text = std::fs::read_to_string(&index).map_err(|e| e.to_string())?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
        let mut shards: Vec<&str> = v["weight_map"]
            .as_object()
            .map(|m| m.values().filter_map(|f| f.as_str()).collect())
            .unwrap_or_default();
        shards.sort_unstable();
        shards.dedup();
        for shard in shards {
            repo.get(plain_file_name(shard)?)
                .map_err(|e| e.to_string())?;
        }
    }
    config
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| "config.json has no parent folder".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids_that_could_leave_the_cache_are_refused() {
        assert_eq!(hub_id("org/name").ok(), Some(("org/name", "main")));
        assert_eq!(
            hub_id("org/name@v1.0/fix").ok(),
            Some(("org/name", "v1.0/fix"))
        );
        for bad in [
            "org/name@../../../tmp/x",
            "org/name@..",
            "org/name@/etc",
            "org/name@a//b",
            "org/name@main/",
            "org/..",
            "../name",
            "org/na me",
            "org/name/extra",
            "org/name@a\\b",
        ] {
            let err = hub_id(bad).unwrap_err().to_string();
            assert!(
                err.contains("not a valid Hugging Face Hub id"),
                "{bad}: {err}"
            );
        }
        assert!(plain_file_name("model-00001.safetensors").is_ok());
        for bad in ["../x.safetensors", "a/b", "..", ""] {
            assert!(plain_file_name(bad).is_err(), "{bad}");
        }
    }
}
