mod common;
use shmport::*;
use std::time::{Duration, Instant};

#[test]
fn smoke_in_process() {
    let ch = MessageChannel::new().unwrap();
    let (a, b) = (ch.port1(), ch.port2());
    a.post_bytes(b"hello").unwrap();
    assert_eq!(b.recv_bytes_with(|x| x.to_vec()).unwrap(), b"hello");
    assert!(b.try_recv().unwrap_err().is_empty());
    let t = std::thread::spawn(move || b.recv_bytes_with(|x| x.len()));
    std::thread::sleep(Duration::from_millis(50));
    a.post_bytes(&[1; 100]).unwrap();
    assert_eq!(t.join().unwrap().unwrap(), 100);
    drop(a);
    drop(ch);
}

#[test]
fn smoke_close_wakes() {
    let ch = MessageChannel::new().unwrap();
    let (a, b) = (ch.port1(), ch.port2());
    drop(ch);
    let t = std::thread::spawn(move || {
        let s = Instant::now();
        (b.recv().unwrap_err(), s.elapsed())
    });
    std::thread::sleep(Duration::from_millis(50));
    drop(a);
    let (e, el) = t.join().unwrap();
    assert!(e.is_closed());
    println!("close observed after {el:?}");
}

#[test]
fn child_entry() {
    let Some(role) = common::role() else { return };
    let port = MessagePort::from_parent().unwrap();
    match role.as_str() {
        "echo" => loop {
            match port.recv_bytes_with(|b| b.to_vec()) {
                Ok(v) => port.post_bytes(&v).unwrap(),
                Err(_) => return,
            }
        },
        _ => panic!("unknown role"),
    }
}

#[test]
fn smoke_cross_process() {
    if common::role().is_some() {
        return;
    }
    let _w = common::watchdog("smoke_cross_process", Duration::from_secs(30));
    let ch = MessageChannel::new().unwrap();
    let child = common::spawn_role("child_entry", "echo", &ch.port2());
    let p = ch.port1();
    let start = Instant::now();
    for i in 0..10000u32 {
        p.post_bytes(&i.to_le_bytes()).unwrap();
        let v = p
            .recv_bytes_with(|b| u32::from_le_bytes(b.try_into().unwrap()))
            .unwrap();
        assert_eq!(v, i);
    }
    println!("10000 round trips in {:?}", start.elapsed());
    p.close();
    common::expect_success(child);
}
