//! Why subtasks run on threads: moves records between two subtasks through a
//! bounded channel, as threads with crossbeam channels and as tokio tasks with
//! tokio mpsc, at several batch sizes. Run with
//! `cargo run --release -p runnel-runtime --example exchange_bench`.

use std::time::Instant;

const RECORDS: u64 = 20_000_000;

fn threads(batch: usize) -> f64 {
    let (tx, rx) = crossbeam_channel::bounded::<Vec<(u64, u64)>>(8);
    let t0 = Instant::now();
    let producer = std::thread::spawn(move || {
        let mut buf = Vec::with_capacity(batch);
        for i in 0..RECORDS {
            buf.push((i, i));
            if buf.len() == batch {
                let _ = tx.send(std::mem::replace(&mut buf, Vec::with_capacity(batch)));
            }
        }
        if !buf.is_empty() {
            let _ = tx.send(buf);
        }
    });
    let mut sum = 0u64;
    for b in rx {
        for (k, v) in b {
            sum = sum.wrapping_add(k ^ v);
        }
    }
    let _ = producer.join();
    std::hint::black_box(sum);
    RECORDS as f64 / t0.elapsed().as_secs_f64()
}

fn tasks(batch: usize) -> f64 {
    let Ok(rt) = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
    else {
        return 0.0;
    };
    let t0 = Instant::now();
    rt.block_on(async move {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<(u64, u64)>>(8);
        let producer = tokio::spawn(async move {
            let mut buf = Vec::with_capacity(batch);
            for i in 0..RECORDS {
                buf.push((i, i));
                if buf.len() == batch {
                    let _ = tx
                        .send(std::mem::replace(&mut buf, Vec::with_capacity(batch)))
                        .await;
                }
            }
            if !buf.is_empty() {
                let _ = tx.send(buf).await;
            }
        });
        let consumer = tokio::spawn(async move {
            let mut sum = 0u64;
            while let Some(b) = rx.recv().await {
                for (k, v) in b {
                    sum = sum.wrapping_add(k ^ v);
                }
            }
            sum
        });
        let _ = producer.await;
        let _ = std::hint::black_box(consumer.await);
    });
    RECORDS as f64 / t0.elapsed().as_secs_f64()
}

fn main() {
    println!("| batch | threads + crossbeam (M rec/s) | tokio tasks + mpsc (M rec/s) | ratio |");
    println!("|---:|---:|---:|---:|");
    for batch in [1usize, 64, 512] {
        let a = threads(batch) / 1e6;
        let b = tasks(batch) / 1e6;
        println!("| {batch} | {a:.1} | {b:.1} | {:.2}x |", a / b);
    }
}
