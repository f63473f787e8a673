//! Downloading a checkpoint from the Hub: a local server speaks the Hub's file protocol
//! (`/<org>/<name>/resolve/<revision>/<file>` with `ETag`, `X-Repo-Commit` and byte ranges),
//! `HF_ENDPOINT` points hf-hub at it, and the files land in the Hugging Face cache layout,
//! load, and are found again offline once the server is gone.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};

use mirante_training::{Device, DualEncoder, resolve_model};

mod common;

const REPO: &str = "mirante-test/remote-clip";
const COMMIT: &str = "4f0c1e2d3b4a59687766554433221100ffeeddcc";

/// Serves `files` as repository `REPO` at any revision; records each requested path.
struct FakeHub {
    endpoint: String,
    requests: Arc<Mutex<Vec<String>>>,
}

impl FakeHub {
    fn start(files: HashMap<String, Vec<u8>>) -> FakeHub {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&requests);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { break };
                serve(stream, &files, &log);
            }
        });
        FakeHub { endpoint, requests }
    }
}

/// Answers one request on `stream` (the server closes every connection after its answer).
fn serve(mut stream: TcpStream, files: &HashMap<String, Vec<u8>>, log: &Mutex<Vec<String>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request = String::new();
    reader.read_line(&mut request).unwrap();
    let path = request.split_whitespace().nth(1).unwrap_or("").to_string();
    let (mut range_start, mut range_end) = (0usize, None::<usize>);
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).unwrap() == 0 || header.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("range")
        {
            let (start, end) = value
                .trim()
                .trim_start_matches("bytes=")
                .split_once('-')
                .unwrap();
            range_start = start.parse().unwrap();
            range_end = end.parse().ok();
        }
    }
    log.lock().unwrap().push(path.clone());
    let prefix = format!("/{REPO}/resolve/");
    let file = path
        .strip_prefix(&prefix)
        .and_then(|rest| rest.split_once('/'))
        .and_then(|(_, name)| files.get(name));
    let response = match file {
        Some(bytes) => {
            // `bytes=0-0` asks for metadata (and one byte), `bytes=N-` for the rest.
            let end = range_end.map_or(bytes.len(), |e| (e + 1).min(bytes.len()));
            let body = &bytes[range_start.min(end)..end];
            let etag = format!("{:08x}{:08x}", crc32c::crc32c(bytes), bytes.len());
            let mut head = format!(
                "HTTP/1.1 206 Partial Content\r\nETag: \"{etag}\"\r\nX-Repo-Commit: {COMMIT}\r\n\
                 Content-Range: bytes {range_start}-{}/{}\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n",
                end.saturating_sub(1),
                bytes.len(),
                body.len()
            )
            .into_bytes();
            head.extend_from_slice(body);
            head
        }
        None => {
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec()
        }
    };
    let _ = stream.write_all(&response);
}

fn read_folder(folder: &Path) -> HashMap<String, Vec<u8>> {
    std::fs::read_dir(folder)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

#[test]
fn a_hub_id_downloads_into_the_cache_layout_and_loads_offline_afterwards() {
    let fixture = common::fixtures().join("clip-tiny");
    let hub = FakeHub::start(read_folder(&fixture));
    let cache = tempfile::tempdir().unwrap();
    // SAFETY: this test binary has a single test, so no other thread reads the environment.
    unsafe {
        std::env::set_var("HF_HUB_CACHE", cache.path());
        std::env::set_var("HF_ENDPOINT", &hub.endpoint);
        std::env::remove_var("HF_HUB_OFFLINE");
    }
    let folder = resolve_model(REPO).unwrap();
    let repo = cache.path().join("models--mirante-test--remote-clip");
    assert_eq!(folder, repo.join("snapshots").join(COMMIT));
    assert_eq!(
        std::fs::read_to_string(repo.join("refs").join("main")).unwrap(),
        COMMIT
    );
    for file in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "preprocessor_config.json",
    ] {
        assert_eq!(
            std::fs::read(folder.join(file)).unwrap(),
            std::fs::read(fixture.join(file)).unwrap(),
            "{file} arrived intact"
        );
    }
    let requests = hub.requests.lock().unwrap().clone();
    assert!(
        requests
            .iter()
            .any(|p| p == &format!("/{REPO}/resolve/main/model.safetensors")),
        "{requests:?}"
    );
    // Optional files the repository lacks were asked for and skipped.
    assert!(requests.iter().any(|p| p.ends_with("/spiece.model")));

    let downloaded = DualEncoder::load(&folder, &Device::Cpu).unwrap();
    let direct = DualEncoder::load(&fixture, &Device::Cpu).unwrap();
    assert_eq!(
        downloaded.embed_texts(&["a photo of a cat"]).unwrap(),
        direct.embed_texts(&["a photo of a cat"]).unwrap()
    );

    // Offline afterwards: the cache answers, and nothing reaches the server.
    let asked = requests.len();
    unsafe {
        std::env::set_var("HF_HUB_OFFLINE", "1");
    }
    assert_eq!(resolve_model(REPO).unwrap(), folder);
    assert_eq!(hub.requests.lock().unwrap().len(), asked);
    // A repository the server lacks fails with the cache path and the reason.
    unsafe {
        std::env::remove_var("HF_HUB_OFFLINE");
    }
    let err = resolve_model("mirante-test/absent")
        .unwrap_err()
        .to_string();
    assert!(err.contains("models--mirante-test--absent"), "{err}");
}
