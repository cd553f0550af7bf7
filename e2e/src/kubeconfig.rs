//! The kubeconfig file clients use to reach the local control plane.

use std::path::Path;

/// Plain HTTP on loopback, no credentials: the server accepts every request
/// (it is test infrastructure bound to 127.0.0.1).
pub fn render(server_url: &str, namespace: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: runnel-local\n  cluster:\n    server: {server_url}\ncontexts:\n- name: runnel-local\n  context:\n    cluster: runnel-local\n    user: runnel-local\n    namespace: {namespace}\ncurrent-context: runnel-local\nusers:\n- name: runnel-local\n  user: {{}}\n"
    )
}

pub fn write(path: &Path, server_url: &str, namespace: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, render(server_url, namespace))
}
