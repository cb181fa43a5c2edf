//! Reads the two families autoscaling needs out of a pod's Prometheus text exposition, as the
//! bytes arrive: the request counter summed over every label set, and the request-duration
//! histogram's buckets summed over routes per `le`. Every other family is skipped unparsed, and
//! nothing but the running sums and one partial line is kept, so a large or hostile `/metrics`
//! answer costs bounded memory.

use scaled_contract::metrics::{HTTP_REQUEST_DURATION_SECONDS, HTTP_REQUESTS_TOTAL};

/// Longest line accepted; real lines are a few hundred bytes.
const MAX_LINE: usize = 16 * 1024;

/// What one scrape of one pod says.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sample {
    /// Requests served since the process started (0 before the first request: the family is
    /// absent until a label set exists).
    pub requests: f64,
    /// Cumulative request-duration buckets `(le, count)`, summed over routes, ordered by `le`,
    /// the last one `+Inf`. Empty before the first request.
    pub buckets: Vec<(f64, f64)>,
}

/// Why an exposition was refused.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ExpositionError {
    /// A line of a family we read does not parse.
    #[error("malformed line {line:?}: {problem}")]
    Malformed {
        /// The line (truncated).
        line: String,
        /// What is wrong.
        problem: &'static str,
    },
    /// A line is longer than [`MAX_LINE`].
    #[error("a line is longer than {MAX_LINE} bytes")]
    LineTooLong,
}

/// Incremental parser: [`feed`](ExpositionParser::feed) chunks, then
/// [`finish`](ExpositionParser::finish).
#[derive(Debug, Default)]
pub struct ExpositionParser {
    partial: Vec<u8>,
    sample: Sample,
}

impl ExpositionParser {
    /// A parser with nothing read.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads the complete lines in `chunk` (plus what an earlier chunk left unfinished).
    pub fn feed(&mut self, mut chunk: &[u8]) -> Result<(), ExpositionError> {
        while let Some(newline) = chunk.iter().position(|b| *b == b'\n') {
            if self.partial.is_empty() {
                self.line(&chunk[..newline])?;
            } else {
                self.partial.extend_from_slice(&chunk[..newline]);
                let line = std::mem::take(&mut self.partial);
                self.line(&line)?;
            }
            chunk = &chunk[newline + 1..];
        }
        if self.partial.len() + chunk.len() > MAX_LINE {
            return Err(ExpositionError::LineTooLong);
        }
        self.partial.extend_from_slice(chunk);
        Ok(())
    }

    /// The sums, after the last (possibly unterminated) line.
    pub fn finish(mut self) -> Result<Sample, ExpositionError> {
        let rest = std::mem::take(&mut self.partial);
        self.line(&rest)?;
        let mut sample = self.sample;
        sample.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        Ok(sample)
    }

    fn line(&mut self, raw: &[u8]) -> Result<(), ExpositionError> {
        let Ok(line) = std::str::from_utf8(raw) else {
            // Not a family we read can be non-UTF-8 and still be valid; skip the line.
            return Ok(());
        };
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            return Ok(());
        }
        let name_end = line
            .find(|c: char| c == '{' || c.is_whitespace())
            .unwrap_or(line.len());
        let name = &line[..name_end];
        let is_requests = name == HTTP_REQUESTS_TOTAL;
        let is_bucket = name
            .strip_prefix(HTTP_REQUEST_DURATION_SECONDS)
            .is_some_and(|suffix| suffix == "_bucket");
        if !is_requests && !is_bucket {
            return Ok(());
        }
        let malformed = |problem| ExpositionError::Malformed {
            line: line.chars().take(200).collect(),
            problem,
        };
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end + 1..]).map_err(malformed)?
        } else {
            (Vec::new(), &line[name_end..])
        };
        let value_text = rest
            .split_whitespace()
            .next()
            .ok_or_else(|| malformed("no value"))?;
        let value =
            parse_float(value_text).ok_or_else(|| malformed("the value is not a number"))?;
        if is_requests {
            self.sample.requests += value;
            return Ok(());
        }
        let le = labels
            .iter()
            .find(|(key, _)| key == "le")
            .map(|(_, value)| value.as_str())
            .ok_or_else(|| malformed("a bucket without `le`"))?;
        let le = parse_float(le).ok_or_else(|| malformed("`le` is not a number"))?;
        match self
            .sample
            .buckets
            .iter_mut()
            .find(|(bound, _)| *bound == le)
        {
            Some((_, count)) => *count += value,
            None => self.sample.buckets.push((le, value)),
        }
        Ok(())
    }
}

/// Label pairs of one line.
type Labels = Vec<(String, String)>;

/// Parses `name="value",...}` (after the `{`) and returns the pairs and what follows the `}`.
fn parse_labels(text: &str) -> Result<(Labels, &str), &'static str> {
    let mut labels = Vec::new();
    let mut rest = text;
    loop {
        rest = rest.trim_start();
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((labels, after));
        }
        let name_end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .ok_or("unterminated labels")?;
        if name_end == 0 {
            return Err("a label without a name");
        }
        let name = rest[..name_end].to_string();
        rest = rest[name_end..].trim_start();
        rest = rest.strip_prefix('=').ok_or("a label without '='")?;
        rest = rest.trim_start();
        rest = rest.strip_prefix('"').ok_or("an unquoted label value")?;
        let mut value = String::new();
        let mut characters = rest.char_indices();
        let end = loop {
            match characters.next() {
                Some((index, '"')) => break index,
                Some((_, '\\')) => match characters.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, escaped)) => value.push(escaped),
                    None => return Err("unterminated label value"),
                },
                Some((_, character)) => value.push(character),
                None => return Err("unterminated label value"),
            }
        };
        labels.push((name, value));
        rest = rest[end + 1..].trim_start();
        if let Some(after) = rest.strip_prefix(',') {
            rest = after;
        } else if !rest.starts_with('}') {
            return Err("labels not separated by ','");
        }
    }
}

fn parse_float(text: &str) -> Option<f64> {
    match text {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => text.parse().ok(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// What the app's registry prints: two routes, a label value with braces, other families.
    pub(crate) fn app_exposition(requests_a: u64, requests_b: u64, slow: u64) -> String {
        let total = requests_a + requests_b;
        let fast = total - slow;
        format!(
            "# HELP cache_lookups_total Cache lookups by layer and result\n\
             # TYPE cache_lookups_total counter\n\
             cache_lookups_total{{layer=\"l1\",result=\"hit\"}} 7\n\
             # HELP http_request_duration_seconds HTTP request latency by matched route\n\
             # TYPE http_request_duration_seconds histogram\n\
             http_request_duration_seconds_bucket{{route=\"/api/users/{{id}}\",le=\"0.01\"}} {fast}\n\
             http_request_duration_seconds_bucket{{route=\"/api/users/{{id}}\",le=\"0.1\"}} {fast}\n\
             http_request_duration_seconds_bucket{{route=\"/api/users/{{id}}\",le=\"1\"}} {total}\n\
             http_request_duration_seconds_bucket{{route=\"/api/users/{{id}}\",le=\"+Inf\"}} {total}\n\
             http_request_duration_seconds_sum{{route=\"/api/users/{{id}}\"}} 12.5\n\
             http_request_duration_seconds_count{{route=\"/api/users/{{id}}\"}} {total}\n\
             http_request_duration_seconds_bucket{{route=\"/health\",le=\"0.01\"}} 0\n\
             http_request_duration_seconds_bucket{{route=\"/health\",le=\"0.1\"}} 0\n\
             http_request_duration_seconds_bucket{{route=\"/health\",le=\"1\"}} 0\n\
             http_request_duration_seconds_bucket{{route=\"/health\",le=\"+Inf\"}} 0\n\
             # TYPE http_requests_total counter\n\
             http_requests_total{{method=\"GET\",route=\"/api/users/{{id}}\",status=\"200\"}} {requests_a}\n\
             http_requests_total{{method=\"POST\",route=\"/api/say \\\"hi\\\", please\",status=\"201\"}} {requests_b}\n\
             http_requests_total_created 1.7e9\n"
        )
    }

    #[test]
    fn the_request_counter_and_buckets_are_summed_over_label_sets() {
        let mut parser = ExpositionParser::new();
        parser
            .feed(app_exposition(30, 12, 2).as_bytes())
            .expect("parses");
        let sample = parser.finish().expect("parses");
        assert_eq!(sample.requests, 42.0);
        assert_eq!(
            sample.buckets,
            vec![
                (0.01, 40.0),
                (0.1, 40.0),
                (1.0, 42.0),
                (f64::INFINITY, 42.0)
            ]
        );
    }

    #[test]
    fn lines_split_across_chunks_parse_the_same() {
        let text = app_exposition(5, 6, 1);
        let mut whole = ExpositionParser::new();
        whole.feed(text.as_bytes()).expect("parses");
        let whole = whole.finish().expect("parses");
        for chunk_size in [1, 3, 7, 64] {
            let mut parser = ExpositionParser::new();
            for chunk in text.as_bytes().chunks(chunk_size) {
                parser.feed(chunk).expect("parses");
            }
            assert_eq!(
                parser.finish().expect("parses"),
                whole,
                "chunks of {chunk_size}"
            );
        }
    }

    #[test]
    fn an_app_without_requests_yet_reads_as_zero() {
        let mut parser = ExpositionParser::new();
        parser
            .feed(b"# TYPE http_requests_total counter\nother_total 3\n")
            .expect("parses");
        assert_eq!(parser.finish().expect("parses"), Sample::default());
    }

    #[test]
    fn broken_lines_of_the_families_read_are_refused_and_others_ignored() {
        for bad in [
            "http_requests_total{method=\"GET\" 3\n",
            "http_requests_total{method=GET} 3\n",
            "http_requests_total three\n",
            "http_request_duration_seconds_bucket{route=\"/\"} 3\n",
            "http_request_duration_seconds_bucket{le=\"soon\"} 3\n",
        ] {
            let mut parser = ExpositionParser::new();
            let result = parser
                .feed(bad.as_bytes())
                .and_then(|()| parser.finish().map(|_| ()));
            assert!(result.is_err(), "{bad:?} was accepted");
        }
        let mut parser = ExpositionParser::new();
        parser
            .feed(b"unrelated{broken 1\nhttp_requests_total 2 1700000000000\n")
            .expect("other families are not parsed");
        assert_eq!(parser.finish().expect("parses").requests, 2.0);
    }

    #[test]
    fn an_endless_line_is_refused_without_buffering_it() {
        let mut parser = ExpositionParser::new();
        let chunk = vec![b'x'; 4096];
        let mut result = Ok(());
        for _ in 0..8 {
            result = parser.feed(&chunk);
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result, Err(ExpositionError::LineTooLong));
    }
}
