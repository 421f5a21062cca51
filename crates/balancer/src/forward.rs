//! The retry loop every wire path runs: pick a server (the sticky one first, then the pool's
//! algorithm), exchange with it, and on failure follow the retry policy — another server, the
//! same request again, or the balancer's own answer — until a server answers.

use std::sync::Arc;

use crate::codec::{Extras, HeaderSink};
use crate::frontend::Frontend;
use crate::pipeline::{Plan, Txn, set_cookie};
use crate::retry::{Attempts, Failure, Next};
use crate::server::Server;
use crate::upstream::{Answer, BodyStream, ClientBodyError, ExchangeError, Interim, exchange};

/// Why no server's answer can be relayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unanswered {
    /// The balancer answers itself.
    Failed(Failure),
    /// The client's body failed.
    Client(ClientBodyError),
}

/// Forwards a request — `request` is its head and its body when that is buffered, `body`
/// the rest of it streamed from the client — and returns the answering server and its final
/// response head.
pub(crate) async fn forward<S: HeaderSink + Default + Send>(
    plan: &Plan,
    fe: &Frontend,
    txn: &mut Txn,
    request: [&[u8]; 2],
    body: &mut impl BodyStream,
    interim: &mut impl Interim<S>,
    close: bool,
) -> Result<(Arc<Server>, Answer<S>), Unanswered> {
    let view = plan.pool.view();
    // A body read from the client as it goes cannot be sent twice.
    let resendable = !body.streams();
    let mut tries = Attempts::new(&plan.pool, &view, plan.idempotent && resendable, plan.sticky.as_deref());
    let result = loop {
        let Some(server) = tries.next_server(&view, plan.key.as_deref()) else {
            break Err(Unanswered::Failed(tries.exhausted(&fe.stats)));
        };
        let extras = Extras {
            head_only: plan.head_only,
            set_cookie: set_cookie(plan, &server),
            close,
            upgrade: plan.upgrade,
        };
        let why = match exchange(&server, request, body, plan.idempotent, &fe.timeouts, extras, interim).await
        {
            Ok(answer) => {
                if tries.answered(&server, answer.head.status) {
                    continue;
                }
                txn.answered(server.clone(), answer.head.status, answer.timing);
                break Ok((server, answer));
            }
            Err(ExchangeError::Client(e)) => {
                server.release();
                break Err(Unanswered::Client(e));
            }
            Err(ExchangeError::Attempt(why)) => why,
        };
        tracing::debug!(server = %shoal_gossip::escape::Esc(&server.name), ?why, "upstream attempt failed");
        match tries.failed(server, why) {
            Next::Resend | Next::Elsewhere => {}
            Next::Fail(f) => break Err(Unanswered::Failed(f)),
        }
    };
    txn.retried(tries.retried());
    result
}
