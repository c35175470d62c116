//! The streaming forms of the list calls (`StreamPodSandboxes`, …): the
//! same results as their `List*` twins, sent as a sequence of batches.

use tonic::Response;
use tonic::codegen::BoxStream;

/// Items per streamed message: small enough that a batch of the largest
/// items (container stats with their attributes) stays far below gRPC's
/// default 4 MiB message limit.
pub(crate) const BATCH: usize = 100;

/// `items` as a stream of responses of at most [`BATCH`] items each, built
/// by `wrap`; no message at all when there are no items.
pub(crate) fn in_batches<T, R>(
    items: Vec<T>,
    wrap: impl Fn(Vec<T>) -> R + Send + 'static,
) -> Response<BoxStream<R>>
where
    T: Send + 'static,
    R: Send + 'static,
{
    let mut batches = Vec::with_capacity(items.len().div_ceil(BATCH));
    let mut items = items.into_iter().peekable();
    while items.peek().is_some() {
        batches.push(wrap(items.by_ref().take(BATCH).collect()));
    }
    Response::new(Box::pin(tokio_stream::iter(batches.into_iter().map(Ok))))
}

#[cfg(test)]
mod tests {
    use tokio_stream::StreamExt;

    use super::*;

    async fn sizes(n: usize) -> Vec<usize> {
        let stream = in_batches((0..n).collect::<Vec<_>>(), |b| b).into_inner();
        let batches: Vec<Vec<usize>> = stream.map(|r| r.unwrap()).collect().await;
        let flat: Vec<usize> = batches.iter().flatten().copied().collect();
        assert_eq!(
            flat,
            (0..n).collect::<Vec<_>>(),
            "every item once, in order"
        );
        batches.iter().map(Vec::len).collect()
    }

    #[tokio::test]
    async fn items_are_sent_in_order_in_bounded_batches() {
        assert_eq!(sizes(0).await, Vec::<usize>::new());
        assert_eq!(sizes(1).await, vec![1]);
        assert_eq!(sizes(BATCH).await, vec![BATCH]);
        assert_eq!(sizes(2 * BATCH + 1).await, vec![BATCH, BATCH, 1]);
    }
}
