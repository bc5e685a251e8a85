//! An HTTPS client on rustls, a TLS stack the sensor cannot hook, for the
//! agent tests: it posts one JSON body per connection and prints the
//! response status.
//!
//! ```text
//! tls_client --ca CA.pem --host NAME [--port 443] --path /v1/... --body JSON
//!            [--header 'Name: value']... [--repeat N] [--split-hello BYTES]
//!            [--linger-ms MS]
//! ```
//!
//! `--split-hello BYTES` sends the first TLS flight (the ClientHello) in
//! two `write` calls, the first one `BYTES` long, as a client with a small
//! socket buffer or an unusual TLS stack might. `--linger-ms MS` keeps the
//! process alive that long after its last request, as a long-running agent
//! would be, so the sensor can still read its memory map.

use std::{
    io::{ErrorKind, Read, Write},
    net::{TcpStream, ToSocketAddrs},
    path::PathBuf,
    process::ExitCode,
    sync::Arc,
};

use rustls::{
    ClientConfig, ClientConnection, RootCertStore, StreamOwned,
    pki_types::{CertificateDer, ServerName, pem::PemObject},
};

struct Options {
    ca: PathBuf,
    host: String,
    port: u16,
    path: String,
    body: String,
    headers: Vec<String>,
    repeat: u32,
    split_hello: Option<usize>,
    linger: std::time::Duration,
}

fn parse_options() -> Result<Options, String> {
    let mut options = Options {
        ca: PathBuf::new(),
        host: String::new(),
        port: 443,
        path: String::new(),
        body: String::new(),
        headers: Vec::new(),
        repeat: 1,
        split_hello: None,
        linger: std::time::Duration::ZERO,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--ca" => options.ca = PathBuf::from(value()?),
            "--host" => options.host = value()?,
            "--port" => {
                options.port = value()?
                    .parse()
                    .map_err(|e| format!("invalid --port: {e}"))?
            }
            "--path" => options.path = value()?,
            "--body" => options.body = value()?,
            "--header" => options.headers.push(value()?),
            "--repeat" => {
                options.repeat = value()?
                    .parse()
                    .map_err(|e| format!("invalid --repeat: {e}"))?
            }
            "--split-hello" => {
                let bytes = value()?
                    .parse()
                    .map_err(|e| format!("invalid --split-hello: {e}"))?;
                options.split_hello = Some(bytes);
            }
            "--linger-ms" => {
                let ms = value()?
                    .parse()
                    .map_err(|e| format!("invalid --linger-ms: {e}"))?;
                options.linger = std::time::Duration::from_millis(ms);
            }
            other => return Err(format!("unknown option {other}")),
        }
    }
    if options.ca.as_os_str().is_empty() || options.host.is_empty() || options.path.is_empty() {
        return Err("--ca, --host and --path are required".to_owned());
    }
    Ok(options)
}

/// A socket whose first `write` sends at most `split` bytes, so the
/// ClientHello leaves in two system calls; later writes pass through.
struct SplitFirstWrite {
    socket: TcpStream,
    split: Option<usize>,
}

impl Write for SplitFirstWrite {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.split.take() {
            Some(split) if split < buf.len() => self.socket.write(&buf[..split]),
            _ => self.socket.write(buf),
        }
    }

    fn write_vectored(&mut self, bufs: &[std::io::IoSlice<'_>]) -> std::io::Result<usize> {
        if self.split.is_some() {
            // One buffer at a time, so the split applies to the first.
            let first = bufs
                .iter()
                .find(|b| !b.is_empty())
                .map_or(&[][..], |b| &**b);
            return self.write(first);
        }
        self.socket.write_vectored(bufs)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.socket.flush()
    }
}

impl Read for SplitFirstWrite {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.socket.read(buf)
    }
}

fn tls_config(ca: &PathBuf) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    let certificates =
        CertificateDer::pem_file_iter(ca).map_err(|e| format!("reading {}: {e}", ca.display()))?;
    for certificate in certificates {
        let certificate = certificate.map_err(|e| format!("parsing {}: {e}", ca.display()))?;
        roots
            .add(certificate)
            .map_err(|e| format!("adding {} to the root store: {e}", ca.display()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS versions: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Sends one request on a new connection; returns the response head's
/// status line and the number of bytes received.
fn request(options: &Options, config: &Arc<ClientConfig>) -> Result<(String, usize), String> {
    let name =
        ServerName::try_from(options.host.clone()).map_err(|e| format!("invalid --host: {e}"))?;
    let connection =
        ClientConnection::new(config.clone(), name).map_err(|e| format!("TLS setup: {e}"))?;
    // The system resolver, so the test's hosts file or DNS server decides.
    let address = (options.host.as_str(), options.port)
        .to_socket_addrs()
        .map_err(|e| format!("resolving {}: {e}", options.host))?
        .next()
        .ok_or_else(|| format!("{} resolved to no address", options.host))?;
    let socket =
        TcpStream::connect(address).map_err(|e| format!("connecting to {address}: {e}"))?;
    let socket = SplitFirstWrite {
        socket,
        split: options.split_hello,
    };
    let mut tls = StreamOwned::new(connection, socket);

    let mut head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        options.path,
        options.host,
        options.body.len()
    );
    for header in &options.headers {
        head.push_str(header);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    tls.write_all(head.as_bytes())
        .map_err(|e| format!("sending the request: {e}"))?;
    tls.write_all(options.body.as_bytes())
        .map_err(|e| format!("sending the request body: {e}"))?;

    let mut response = Vec::new();
    match tls.read_to_end(&mut response) {
        Ok(_) => {}
        // Python's server closes without close_notify after `Connection:
        // close`; the body is complete by then.
        Err(error) if error.kind() == ErrorKind::UnexpectedEof && !response.is_empty() => {}
        Err(error) => return Err(format!("reading the response: {error}")),
    }
    let text = String::from_utf8_lossy(&response);
    let status = text.lines().next().unwrap_or_default().to_owned();
    Ok((status, response.len()))
}

fn main() -> ExitCode {
    let options = match parse_options() {
        Ok(options) => options,
        Err(error) => {
            eprintln!("tls_client: {error}");
            return ExitCode::from(2);
        }
    };
    let config = match tls_config(&options.ca) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("tls_client: {error}");
            return ExitCode::FAILURE;
        }
    };
    for _ in 0..options.repeat {
        match request(&options, &config) {
            Ok((status, bytes)) => println!("status {status} ({bytes} bytes)"),
            Err(error) => {
                eprintln!("tls_client: {error}");
                return ExitCode::FAILURE;
            }
        }
    }
    std::thread::sleep(options.linger);
    ExitCode::SUCCESS
}
