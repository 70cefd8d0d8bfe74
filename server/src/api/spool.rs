//! Spooling a bulk upload to an anonymous temporary file under the data directory: the body
//! is read and validated at network speed with no database lock held, then read back at
//! disk speed inside one short transaction (DESIGN §9). The file has no name, so it is gone
//! when closed, even if the process dies.

use crate::domain::{DeviceName, DeviceSecret, NewDevice};
use crate::store::ImportRow;
use futures_util::Stream;
use std::io;
use std::path::Path;
use tokio::io::{AsyncBufReadExt, AsyncSeekExt, AsyncWriteExt, BufReader, BufWriter};

/// Validated device rows written one per line: `row \t name \t secret`. Names and secrets
/// are validated before they are written, and neither may hold a tab or a line break.
pub struct DeviceSpool {
    file: BufWriter<tokio::fs::File>,
}

impl DeviceSpool {
    /// A new, empty spool in `<data_dir>/tmp`.
    pub async fn create(data_dir: &Path) -> io::Result<Self> {
        let dir = data_dir.join("tmp");
        tokio::fs::create_dir_all(&dir).await?;
        let file = tokio::task::spawn_blocking(move || tempfile::tempfile_in(dir))
            .await
            .map_err(io::Error::other)??;
        Ok(Self {
            file: BufWriter::with_capacity(256 * 1024, tokio::fs::File::from_std(file)),
        })
    }

    pub async fn push(&mut self, row: u64, device: &NewDevice) -> io::Result<()> {
        let secret = device.secret.as_ref().map(DeviceSecret::as_str);
        let line = format!(
            "{row}\t{}\t{}\n",
            device.name.as_str(),
            secret.unwrap_or_default()
        );
        self.file.write_all(line.as_bytes()).await
    }

    /// Rewinds and reads the rows back, in the order they were written.
    pub async fn into_rows(
        mut self,
    ) -> io::Result<impl Stream<Item = io::Result<ImportRow>> + Unpin> {
        self.file.flush().await?;
        let mut file = self.file.into_inner();
        file.seek(io::SeekFrom::Start(0)).await?;
        let lines = BufReader::with_capacity(256 * 1024, file).lines();
        Ok(Box::pin(futures_util::stream::unfold(
            lines,
            |mut lines| async move {
                match lines.next_line().await {
                    Ok(None) => None,
                    Ok(Some(line)) => Some((parse_line(&line), lines)),
                    Err(e) => Some((Err(e), lines)),
                }
            },
        )))
    }
}

fn parse_line(line: &str) -> io::Result<ImportRow> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "malformed spool line");
    let mut parts = line.splitn(3, '\t');
    let row = parts.next().and_then(|r| r.parse().ok()).ok_or_else(bad)?;
    let name = parts.next().ok_or_else(bad)?;
    let secret = parts.next().ok_or_else(bad)?;
    Ok((
        row,
        NewDevice {
            // Validated before they were spooled.
            name: DeviceName::from_trusted(name.to_owned()),
            secret: (!secret.is_empty()).then(|| DeviceSecret::from_trusted(secret.to_owned())),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    #[tokio::test]
    async fn rows_come_back_as_written_and_the_file_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = DeviceSpool::create(dir.path()).await.unwrap();
        let a = NewDevice {
            name: DeviceName::parse("name", "dev-1").unwrap(),
            secret: None,
        };
        let b = NewDevice {
            name: DeviceName::parse("name", "dev:2@x").unwrap(),
            secret: Some(DeviceSecret::parse("secret", "s3cr3t!\"#,x").unwrap()),
        };
        spool.push(1, &a).await.unwrap();
        spool.push(3, &b).await.unwrap();
        let rows: Vec<ImportRow> = spool
            .into_rows()
            .await
            .unwrap()
            .map(|r| r.unwrap())
            .collect()
            .await;
        assert_eq!(rows, vec![(1, a), (3, b)]);
        let left: Vec<_> = std::fs::read_dir(dir.path().join("tmp")).unwrap().collect();
        assert!(left.is_empty(), "the spool is anonymous: {left:?}");
    }
}
