//! One `Embedder` shared by several threads: it is `Send + Sync`, its
//! calls run at the same time (no lock spans them), and every thread gets
//! the vectors one thread alone gets.

mod common;

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use embedtune::{DeviceSpec, Embedder, EmbedderOptions, Pooling};

const fn assert_send_sync<T: Send + Sync>() {}
const _: () = assert_send_sync::<Embedder>();

/// Waits until `n` threads have arrived, or `timeout`; says whether all
/// did. A lock held across embedding calls would keep the others out.
struct Rendezvous {
    arrived: Mutex<usize>,
    all: Condvar,
    n: usize,
}

impl Rendezvous {
    fn arrive(&self, timeout: Duration) -> bool {
        let mut count = self.arrived.lock().unwrap();
        *count += 1;
        self.all.notify_all();
        let (count, _) = self
            .all
            .wait_timeout_while(count, timeout, |c| *c < self.n)
            .unwrap();
        *count >= self.n
    }
}

#[test]
fn threads_share_one_embedder_at_the_same_time() {
    let dir = tempfile::tempdir().unwrap();
    let model = common::tiny_model(dir.path());
    let embedder = Embedder::from_pretrained(
        model.to_str().unwrap(),
        EmbedderOptions {
            pooling: Some(Pooling::Mean),
            batch_size: 8,
            device: DeviceSpec::Cpu,
            ..Default::default()
        },
    )
    .unwrap();
    let text = std::fs::read_to_string(common::corpus(dir.path(), 64)).unwrap();
    let texts: Vec<&str> = text.lines().collect();
    let alone = embedder.embed_all(&texts, &mut |_| {}).unwrap();

    let threads = 4;
    let meet = Rendezvous {
        arrived: Mutex::new(0),
        all: Condvar::new(),
        n: threads,
    };
    let shared = Arc::new(embedder);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let (e, meet, texts) = (shared.clone(), &meet, &texts);
                s.spawn(move || {
                    let mut together = None;
                    // After its first batch, each call waits for the other
                    // three to be inside theirs too: all four calls are in
                    // flight at once.
                    let got = e
                        .embed_batches(texts, None, false, &mut |_, _| {
                            together.get_or_insert_with(|| meet.arrive(Duration::from_secs(60)));
                            Ok(())
                        })
                        .unwrap();
                    (got, together)
                })
            })
            .collect();
        for h in handles {
            let (got, together) = h.join().unwrap();
            assert_eq!(together, Some(true), "the calls did not overlap");
            assert_eq!(
                got, alone,
                "a thread got other vectors than one thread alone"
            );
        }
    });
}
