//! The monitor's loop, from create until the container has exited: one thread, one
//! `poll` over
//!
//! - the signalfd (SIGCHLD: reap; SIGUSR1: reopen the log),
//! - the container's pidfd (readable when it exits), where the kernel has pidfds,
//! - the container's output (two pipes, or the pty master),
//! - the attach socket and its clients,
//! - the container's stdin while bytes wait to be written to it.
//!
//! Nothing in the loop blocks: every descriptor is non-blocking, output to a client is
//! buffered, and a client whose buffer passes [`CLIENT_BUFFER_MAX`] is dropped. Input
//! from clients waits (they are not read) while [`STDIN_BUFFER_MAX`] bytes are waiting
//! for a container that does not read its stdin.

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use crust_proto::monitor::{Frame, FrameKind, Resize, decode_frame, encode_frame, exit_payload};
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::Signal;
use nix::sys::signalfd::SignalFd;
use nix::sys::wait::{Id, WaitPidFlag, waitid};
use nix::unistd::Pid;

use crate::create::Output;
use crate::crilog::{LineBuffer, LogFile, Stream, rfc3339_nano};
use crate::sys;

/// A client with more than this much output waiting is too slow, or gone: dropped.
pub const CLIENT_BUFFER_MAX: usize = 1 << 20;
/// Clients are not read while this much waits to be written to the container's stdin.
pub const STDIN_BUFFER_MAX: usize = 1 << 20;
/// One read of the container's output or of a client.
const READ_SIZE: usize = 64 * 1024;
/// Reads of the output after the container exited, at most: what a process that
/// outlived it (sharing the host's pid namespace) keeps writing is not waited for.
const DRAIN_READS_MAX: usize = 256;
/// The exit code recorded when the container's status cannot be read (only if it
/// was not the monitor's child, which the subreaper setup rules out).
const UNKNOWN_EXIT: i32 = 255;
/// Ctrl-D: "closing" a terminal's input is sending it end-of-file.
const EOT: u8 = 0x04;

/// One source of container output.
struct Source {
    fd: OwnedFd,
    stream: Stream,
    lines: LineBuffer,
}

/// Where client input for the container goes.
struct Stdin {
    /// The stdin pipe's write end, or a duplicate of the pty master; `None` once closed
    /// (or when the container has no stdin).
    fd: Option<OwnedFd>,
    pending: Vec<u8>,
    /// Close once `pending` is written.
    close: bool,
    tty: bool,
}

/// An attach client.
struct Client {
    id: u64,
    stream: UnixStream,
    input: Vec<u8>,
    output: Vec<u8>,
    sent: usize,
    gone: bool,
}

impl Client {
    /// Queues bytes; a client that falls too far behind is marked gone.
    fn queue(&mut self, bytes: &[u8]) {
        if self.output.len() - self.sent + bytes.len() > CLIENT_BUFFER_MAX {
            self.gone = true;
        } else {
            self.output.extend_from_slice(bytes);
        }
    }

    /// Writes what the socket takes now.
    fn flush(&mut self) {
        while !self.gone && self.sent < self.output.len() {
            match self.stream.write(&self.output[self.sent..]) {
                Ok(0) => self.gone = true,
                Ok(n) => self.sent += n,
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => self.gone = true,
            }
        }
        if self.sent == self.output.len() {
            self.output.clear();
            self.sent = 0;
            // Give back what a burst made it hold.
            self.output.shrink_to(READ_SIZE);
        } else if self.sent > self.output.len() / 2 {
            self.output.drain(..self.sent);
            self.sent = 0;
        }
    }

    fn pending(&self) -> bool {
        self.sent < self.output.len()
    }
}

/// What the poll reported ready.
#[derive(Clone, Copy)]
enum Token {
    Signals,
    Pidfd,
    Output(usize),
    Listener,
    Stdin,
    Client(u64),
}

/// How the container ended.
#[derive(Debug, Clone, Copy)]
pub struct Exit {
    /// The exit code (128 + signal for a signal death).
    pub code: i32,
    /// When it was reaped, in nanoseconds since the epoch.
    pub at: i64,
}

/// The running monitor.
pub struct Serve {
    signals: SignalFd,
    pidfd: Option<OwnedFd>,
    container: Pid,
    sources: Vec<Option<Source>>,
    /// The pty master, for resizing (a duplicate of the output's descriptor).
    pty: Option<OwnedFd>,
    stdin: Stdin,
    stdin_once: bool,
    /// The first client that wrote to stdin, with `--stdin-once`.
    stdin_owner: Option<u64>,
    listener: UnixListener,
    clients: Vec<Client>,
    next_client: u64,
    log: LogFile,
    /// Read buffer and record scratch space, kept between reads.
    buffer: Box<[u8]>,
    records: Vec<u8>,
    exit: Option<Exit>,
}

/// What [`Serve::new`] needs.
pub struct Setup {
    /// The blocked signals' descriptor.
    pub signals: SignalFd,
    /// The container process.
    pub container: Pid,
    /// Its output.
    pub output: Output,
    /// Its stdin pipe, without a terminal.
    pub stdin_pipe: Option<OwnedFd>,
    /// Whether clients may write to its stdin.
    pub stdin: bool,
    /// `--stdin-once`.
    pub stdin_once: bool,
    /// The bound attach socket (non-blocking).
    pub listener: UnixListener,
    /// The open CRI log.
    pub log: LogFile,
}

impl Serve {
    /// Ready to serve; nothing is read yet.
    pub fn new(setup: Setup) -> std::io::Result<Serve> {
        let tty = matches!(setup.output, Output::Pty(_));
        let mut pty = None;
        let mut stdin_fd = setup.stdin_pipe;
        let sources = match setup.output {
            Output::Pipes { stdout, stderr } => vec![
                Some(Source {
                    fd: stdout,
                    stream: Stream::Stdout,
                    lines: LineBuffer::new(Stream::Stdout),
                }),
                Some(Source {
                    fd: stderr,
                    stream: Stream::Stderr,
                    lines: LineBuffer::new(Stream::Stderr),
                }),
            ],
            Output::Pty(master) => {
                if setup.stdin {
                    stdin_fd = Some(master.try_clone()?);
                }
                pty = Some(master.try_clone()?);
                vec![Some(Source {
                    fd: master,
                    stream: Stream::Stdout,
                    lines: LineBuffer::new(Stream::Stdout),
                })]
            }
        };
        Ok(Serve {
            signals: setup.signals,
            // Preferred to SIGCHLD alone: it names exactly the container, and it works
            // even if the container were not our child. Older kernels: SIGCHLD only.
            pidfd: sys::pidfd_open(setup.container),
            container: setup.container,
            sources,
            pty,
            stdin: Stdin {
                tty,
                fd: stdin_fd,
                pending: Vec::new(),
                close: false,
            },
            stdin_once: setup.stdin_once,
            stdin_owner: None,
            listener: setup.listener,
            clients: Vec::new(),
            next_client: 0,
            log: setup.log,
            buffer: vec![0; READ_SIZE].into_boxed_slice(),
            records: Vec::new(),
            exit: None,
        })
    }

    /// Output that arrived before the loop (while the runtime ran create).
    pub fn emit_early(&mut self, output: Vec<(Stream, Vec<u8>)>) {
        for (stream, bytes) in output {
            if let Some(index) = self.source_index(stream) {
                self.emit(index, &bytes);
            }
        }
    }

    /// Serves until the container has exited and its output is drained.
    pub fn run(&mut self) -> Exit {
        // The container may have exited already (SIGCHLD consumed while create ran).
        self.reap();
        while self.exit.is_none() {
            self.step();
        }
        self.drain();
        self.stdin.fd = None;
        // The loop only ends with an exit recorded.
        self.exit.unwrap_or(Exit {
            code: UNKNOWN_EXIT,
            at: sys::now_ns(),
        })
    }

    /// Sends every client the exit frame and gives them up to `grace` to take what
    /// they are owed.
    pub fn finish_clients(&mut self, code: i32, grace: Duration) {
        let mut frame = Vec::new();
        encode_frame(FrameKind::Exit, &exit_payload(code), &mut frame);
        for client in &mut self.clients {
            client.queue(&frame);
            client.flush();
        }
        let deadline = Instant::now() + grace;
        loop {
            self.clients.retain(|c| !c.gone && c.pending());
            let left = deadline.saturating_duration_since(Instant::now());
            if self.clients.is_empty() || left.is_zero() {
                return;
            }
            let mut fds: Vec<PollFd> = self
                .clients
                .iter()
                .map(|c| PollFd::new(c.stream.as_fd(), PollFlags::POLLOUT))
                .collect();
            let millis = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
            let _ = poll(&mut fds, PollTimeout::from(millis));
            drop(fds);
            for client in &mut self.clients {
                client.flush();
            }
        }
    }

    /// One poll and the handling of what it reports.
    fn step(&mut self) {
        let mut tokens = Vec::with_capacity(8 + self.clients.len());
        let mut fds = Vec::with_capacity(8 + self.clients.len());
        tokens.push(Token::Signals);
        fds.push(PollFd::new(self.signals.as_fd(), PollFlags::POLLIN));
        if let Some(pidfd) = &self.pidfd {
            tokens.push(Token::Pidfd);
            fds.push(PollFd::new(pidfd.as_fd(), PollFlags::POLLIN));
        }
        for (index, source) in self.sources.iter().enumerate() {
            if let Some(source) = source {
                tokens.push(Token::Output(index));
                fds.push(PollFd::new(source.fd.as_fd(), PollFlags::POLLIN));
            }
        }
        tokens.push(Token::Listener);
        fds.push(PollFd::new(self.listener.as_fd(), PollFlags::POLLIN));
        if let Some(stdin) = &self.stdin.fd
            && !self.stdin.pending.is_empty()
        {
            tokens.push(Token::Stdin);
            fds.push(PollFd::new(stdin.as_fd(), PollFlags::POLLOUT));
        }
        let read_clients = self.stdin.pending.len() < STDIN_BUFFER_MAX;
        for client in &self.clients {
            let mut events = PollFlags::empty();
            if read_clients {
                events |= PollFlags::POLLIN;
            }
            if client.pending() {
                events |= PollFlags::POLLOUT;
            }
            tokens.push(Token::Client(client.id));
            fds.push(PollFd::new(client.stream.as_fd(), events));
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(Errno::EINTR) => return,
            Err(_) => {
                // Nothing sensible is left to do but try again a little later.
                std::thread::sleep(Duration::from_millis(10));
                return;
            }
        }
        let ready: Vec<(Token, PollFlags)> = tokens
            .into_iter()
            .zip(
                fds.iter()
                    .map(|fd| fd.revents().unwrap_or(PollFlags::empty())),
            )
            .filter(|(_, revents)| !revents.is_empty())
            .collect();
        drop(fds);

        for (token, revents) in ready {
            match token {
                Token::Output(index) => self.read_output(index),
                Token::Signals => self.on_signals(),
                Token::Pidfd => self.on_pidfd(),
                Token::Listener => self.accept(),
                Token::Stdin => self.write_stdin(),
                Token::Client(id) => {
                    if revents.intersects(PollFlags::POLLOUT)
                        && let Some(client) = self.clients.iter_mut().find(|c| c.id == id)
                    {
                        client.flush();
                    }
                    if revents
                        .intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR)
                    {
                        self.read_client(id);
                    }
                }
            }
        }
        self.drop_gone_clients();
    }

    fn source_index(&self, stream: Stream) -> Option<usize> {
        self.sources
            .iter()
            .position(|s| s.as_ref().is_some_and(|s| s.stream == stream))
    }

    /// Reads once from output `index`; at its end, writes its unfinished line and
    /// stops watching it.
    fn read_output(&mut self, index: usize) {
        let Some(source) = &self.sources[index] else {
            return;
        };
        let mut buffer = std::mem::take(&mut self.buffer);
        match nix::unistd::read(&source.fd, &mut buffer) {
            Ok(0) => self.close_source(index),
            Ok(n) => self.emit(index, &buffer[..n]),
            Err(Errno::EAGAIN | Errno::EINTR) => {}
            // EIO: a pty master whose other side every process closed.
            Err(_) => self.close_source(index),
        }
        self.buffer = buffer;
    }

    /// Reads all the output that is there now.
    fn drain(&mut self) {
        for index in 0..self.sources.len() {
            for _ in 0..DRAIN_READS_MAX {
                let Some(source) = &self.sources[index] else {
                    break;
                };
                let mut buffer = std::mem::take(&mut self.buffer);
                let read = nix::unistd::read(&source.fd, &mut buffer);
                match read {
                    Ok(n) if n > 0 => self.emit(index, &buffer[..n]),
                    Err(Errno::EINTR) => {}
                    _ => {
                        self.buffer = buffer;
                        break;
                    }
                }
                self.buffer = buffer;
            }
            self.close_source(index);
        }
    }

    fn close_source(&mut self, index: usize) {
        if let Some(mut source) = self.sources[index].take() {
            let mut records = std::mem::take(&mut self.records);
            source
                .lines
                .flush(&rfc3339_nano(sys::now_ns()), &mut records);
            self.log.write(&records);
            records.clear();
            self.records = records;
        }
    }

    /// Logs and forwards output of source `index`.
    fn emit(&mut self, index: usize, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let Some(source) = &mut self.sources[index] else {
            return;
        };
        let mut records = std::mem::take(&mut self.records);
        source
            .lines
            .push(bytes, &rfc3339_nano(sys::now_ns()), &mut records);
        self.log.write(&records);
        records.clear();
        self.records = records;
        let kind = match source.stream {
            Stream::Stdout => FrameKind::Stdout,
            Stream::Stderr => FrameKind::Stderr,
        };
        if !self.clients.is_empty() {
            let mut frame = Vec::with_capacity(bytes.len() + 5);
            encode_frame(kind, bytes, &mut frame);
            for client in &mut self.clients {
                client.queue(&frame);
                client.flush();
            }
        }
    }

    fn on_signals(&mut self) {
        while let Ok(Some(info)) = self.signals.read_signal() {
            if info.ssi_signo == Signal::SIGUSR1 as u32 {
                // kubelet renamed the log; a failed reopen is retried at the next.
                let _ = self.log.reopen();
            }
        }
        self.reap();
    }

    /// Reaps every exited child; the container's status is kept.
    fn reap(&mut self) {
        let container = self.container;
        let mut exit = None;
        sys::reap_exited(|pid, status| {
            if pid == container {
                exit = sys::exit_code(status);
            }
        });
        if let Some(code) = exit {
            self.record_exit(code);
        }
    }

    fn on_pidfd(&mut self) {
        let Some(pidfd) = self.pidfd.take() else {
            return;
        };
        match waitid(
            Id::PIDFd(pidfd.as_fd()),
            WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG,
        ) {
            Ok(status) => match sys::exit_code(status) {
                Some(code) => self.record_exit(code),
                // Not exited after all: keep watching.
                None => self.pidfd = Some(pidfd),
            },
            // ECHILD: reaped already by the SIGCHLD path, which recorded it; or,
            // impossible by construction, not our child: its status is lost.
            Err(_) => {
                if self.exit.is_none() {
                    self.reap();
                }
                if self.exit.is_none() {
                    self.record_exit(UNKNOWN_EXIT);
                }
            }
        }
    }

    fn record_exit(&mut self, code: i32) {
        if self.exit.is_none() {
            self.exit = Some(Exit {
                code,
                at: sys::now_ns(),
            });
        }
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    self.next_client += 1;
                    self.clients.push(Client {
                        id: self.next_client,
                        stream,
                        input: Vec::new(),
                        output: Vec::new(),
                        sent: 0,
                        gone: false,
                    });
                }
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                // WouldBlock: no one else waiting. Others (EMFILE...) are retried at
                // the next readiness rather than spinning here.
                Err(_) => return,
            }
        }
    }

    fn read_client(&mut self, id: u64) {
        let Some(client) = self.clients.iter_mut().find(|c| c.id == id) else {
            return;
        };
        let mut buffer = std::mem::take(&mut self.buffer);
        match client.stream.read(&mut buffer) {
            Ok(0) => client.gone = true,
            Ok(n) => client.input.extend_from_slice(&buffer[..n]),
            Err(err)
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                ) => {}
            Err(_) => client.gone = true,
        }
        self.buffer = buffer;
        let mut frames = Vec::new();
        let mut used = 0;
        loop {
            match decode_frame(&client.input[used..]) {
                Ok(Some((frame, len))) => {
                    used += len;
                    frames.push(frame);
                }
                Ok(None) => break,
                Err(_) => {
                    client.gone = true;
                    break;
                }
            }
        }
        client.input.drain(..used);
        for frame in frames {
            self.handle_frame(id, frame);
        }
    }

    fn handle_frame(&mut self, id: u64, frame: Frame) {
        match frame.kind {
            FrameKind::Stdin => {
                if self.stdin.fd.is_some() && !self.stdin.close {
                    self.stdin.pending.extend_from_slice(&frame.payload);
                    if self.stdin_once && self.stdin_owner.is_none() {
                        self.stdin_owner = Some(id);
                    }
                    self.write_stdin();
                }
            }
            FrameKind::CloseStdin => self.close_stdin(),
            FrameKind::Resize => {
                if let (Some(pty), Some(size)) = (&self.pty, Resize::decode(&frame.payload)) {
                    let _ = sys::set_window_size(pty, size.rows, size.cols);
                }
            }
            FrameKind::ReopenLog => {
                let payload = match self.log.reopen() {
                    Ok(()) => Vec::new(),
                    Err(err) => format!("reopen log: {err}").into_bytes(),
                };
                let mut ack = Vec::new();
                encode_frame(FrameKind::Ack, &payload, &mut ack);
                if let Some(client) = self.clients.iter_mut().find(|c| c.id == id) {
                    client.queue(&ack);
                    client.flush();
                }
            }
            // Frames only the monitor sends: a confused client.
            FrameKind::Stdout | FrameKind::Stderr | FrameKind::Exit | FrameKind::Ack => {
                if let Some(client) = self.clients.iter_mut().find(|c| c.id == id) {
                    client.gone = true;
                }
            }
        }
    }

    /// Closes stdin once what is pending is written; a terminal gets end-of-file.
    fn close_stdin(&mut self) {
        if self.stdin.fd.is_none() || self.stdin.close {
            return;
        }
        if self.stdin.tty {
            self.stdin.pending.push(EOT);
        } else {
            self.stdin.close = true;
        }
        self.write_stdin();
    }

    fn write_stdin(&mut self) {
        let Some(fd) = &self.stdin.fd else {
            self.stdin.pending.clear();
            return;
        };
        let mut written = 0;
        let mut broken = false;
        while written < self.stdin.pending.len() {
            match nix::unistd::write(fd, &self.stdin.pending[written..]) {
                Ok(n) => written += n,
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => break,
                // EPIPE: the container closed its stdin or exited.
                Err(_) => {
                    broken = true;
                    break;
                }
            }
        }
        self.stdin.pending.drain(..written);
        if broken || (self.stdin.close && self.stdin.pending.is_empty()) {
            self.stdin.fd = None;
            self.stdin.pending = Vec::new();
        }
    }

    fn drop_gone_clients(&mut self) {
        let mut owner_left = false;
        let owner = self.stdin_owner;
        self.clients.retain(|client| {
            if client.gone && Some(client.id) == owner {
                owner_left = true;
            }
            !client.gone
        });
        if owner_left {
            self.close_stdin();
        }
    }
}
