//! The start-up banner (README.md, "First start"): printed on stdout when it
//! is a terminal, so that someone who just typed `warden serve` sees where
//! everything is. Scripts and services (stdout not a terminal) get the
//! `listening` log line instead; nothing here is needed to operate Warden.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;

use warden_models::Repository;

/// What the banner shows.
#[derive(Debug)]
pub(crate) struct Banner<'a> {
    /// The data plane's address, and whether it speaks TLS.
    pub data: (SocketAddr, bool),
    /// The management listener (and the console), if on.
    pub admin: Option<(SocketAddr, bool)>,
    /// The gRPC listener, if on.
    pub grpc: Option<SocketAddr>,
    /// The models served.
    pub repository: &'a Repository,
    /// The data dir.
    pub data_dir: &'a Path,
    /// The development CA to trust, when the development certificate is served.
    pub ca: Option<&'a Path>,
    /// Whether the first admin key was just printed above.
    pub key_printed: bool,
}

impl Banner<'_> {
    /// The banner's text; `color` adds ANSI bold and dim.
    pub(crate) fn render(&self, color: bool) -> String {
        let (bold, dim, green, reset) = if color {
            ("\x1b[1m", "\x1b[2m", "\x1b[32m", "\x1b[0m")
        } else {
            ("", "", "", "")
        };
        let url = |(addr, tls): (SocketAddr, bool)| {
            let host = match addr.ip() {
                ip if ip.is_unspecified() => "127.0.0.1".to_owned(),
                std::net::IpAddr::V6(ip) => format!("[{ip}]"),
                ip => ip.to_string(),
            };
            format!(
                "{}://{host}:{}",
                if tls { "https" } else { "http" },
                addr.port()
            )
        };
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\n  {bold}Warden {}{reset}  {green}ready{reset}\n",
            env!("CARGO_PKG_VERSION")
        );
        let data = url(self.data);
        let _ = writeln!(out, "  {dim}data plane{reset}   {data}");
        if let Some(grpc) = self.grpc {
            let _ = writeln!(out, "  {dim}gRPC{reset}         {grpc}");
        }
        match self.admin {
            Some(admin) => {
                let admin = url(admin);
                let _ = writeln!(out, "  {dim}management{reset}   {admin}");
                let _ = writeln!(
                    out,
                    "  {dim}console{reset}      {bold}{admin}/console{reset}"
                );
            }
            None => {
                let _ = writeln!(out, "  {dim}management{reset}   off");
            }
        }
        let mut models = self.repository.models();
        models.sort_by(|a, b| a.name.cmp(&b.name));
        let names: Vec<String> = models
            .iter()
            .map(|m| {
                let versions: Vec<String> = m.versions.keys().map(|v| format!("v{v}")).collect();
                format!("{} {}", m.name, versions.join(","))
            })
            .collect();
        let _ = writeln!(
            out,
            "  {dim}models{reset}       {}",
            if names.is_empty() {
                "none (put model folders in the models directory)".to_owned()
            } else {
                wrap(&names, 60, "               ")
            }
        );
        let _ = writeln!(
            out,
            "  {dim}data dir{reset}     {}",
            self.data_dir.display()
        );
        if let Some(ca) = self.ca {
            let _ = writeln!(
                out,
                "  {dim}trust{reset}        {} (the development CA)",
                ca.display()
            );
        }
        let key = if self.key_printed {
            "printed above, this once only: keep it"
        } else {
            "shown at first start only; `warden keys create --role admin` makes another"
        };
        let _ = writeln!(out, "  {dim}admin key{reset}    {key}");
        let cacert = self
            .ca
            .map_or(String::new(), |ca| format!("--cacert {} ", ca.display()));
        let path = models
            .iter()
            .find(|m| m.name == "iris")
            .or(models.first())
            .map_or("/v2/health/ready".to_owned(), |m| {
                format!("/v2/models/{}", m.name)
            });
        let _ = writeln!(
            out,
            "\n  {dim}try:{reset}  curl {cacert}-H \"X-API-Key: $KEY\" {data}{path}\n"
        );
        out
    }
}

/// Joins `items` with ", ", breaking lines past `width` characters.
fn wrap(items: &[String], width: usize, indent: &str) -> String {
    let mut out = String::new();
    let mut line = 0;
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            if line + item.len() + 2 > width {
                out.push_str(",\n");
                out.push_str(indent);
                line = 0;
            } else {
                out.push_str(", ");
                line += 2;
            }
        }
        out.push_str(item);
        line += item.len();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::wrap;

    #[test]
    fn long_model_lists_wrap() {
        let items: Vec<String> = (0..8).map(|i| format!("model-{i} v1")).collect();
        let text = wrap(&items, 30, "  ");
        assert!(text.lines().all(|l| l.len() <= 32), "{text}");
        assert_eq!(text.matches("model-").count(), 8);
    }
}
