//! One mail transaction on an open session: MAIL FROM, the RCPTs, the content (BDAT or
//! DATA) and, when it is the session's last, QUIT — in as few round trips as the server's
//! extensions allow.
//!
//! With PIPELINING and CHUNKING (Exchange Online, Postfix) a message up to
//! `FLIGHT_BODY_MAX` is one flight: `[RSET] MAIL, RCPT…, BDAT <size> LAST` + the body
//! [+ `QUIT`], written at once and streamed from the spool file in `BODY_PIECE` pieces; the
//! replies are then read in order. A refused MAIL or refused RCPTs do not stop the server
//! from reading the BDAT octets (RFC 3030 §2), so every reply is read and the session stays
//! in step; the content counts as delivered only when MAIL, at least one RCPT and the last
//! BDAT were accepted. Larger bodies wait for the RCPT replies (a refused transaction must
//! not cost the upload). Without CHUNKING, `MAIL, RCPT…, DATA` is one flight and the body,
//! dot-stuffed, with `.` [and `QUIT`] the next. Without PIPELINING every command waits for
//! its reply.
//!
//! Several messages on one session (the queue runner): `start_transaction` writes a small
//! message's whole flight, behind flights whose replies are not read yet (RFC 3030 lets BDAT
//! transactions follow each other without waiting), with RSET at its head so that an
//! earlier transaction that fails cannot leave the server's state indeterminate for it;
//! `finish_transaction` reads the oldest flight's replies. After a connection failure no
//! reply of a later flight is read: those messages are not delivered.
//!
//! Owns: the transaction's wire dialogue and its per-recipient replies. Must not: split
//! recipients into batches (`batch` does) or decide about retries.

use std::time::Duration;

use tokio::io::AsyncReadExt;

use super::data::{DotStuffer, xtext};
use super::reply::Reply;
use super::session::{Line, Session, SessionError, Step, expect, final_reply, out_of_step};
use crate::message::{Body, Envelope, Prepared, Ret};
use crate::status::MessageResult;

/// Bytes read from the body file per write (DATA and BDAT).
pub const BODY_PIECE: usize = 64 * 1024;
/// Largest BDAT chunk; a message up to this size goes out as a single `BDAT n LAST`.
pub const BDAT_CHUNK: u64 = 16 * 1024 * 1024;
/// Largest body sent in the same flight as MAIL and the RCPTs. About one round trip's worth
/// of a fast link: a larger body waits for the RCPT replies, one round trip more, so that a
/// refused sender or recipients do not cost its whole upload.
pub const FLIGHT_BODY_MAX: u64 = 1024 * 1024;
/// Largest body written behind a flight whose replies are still unread. It fits in the
/// socket buffers, so the write never waits for a server still busy with the earlier
/// message: a write that timed out there would end the connection with the earlier
/// message's reply unread, and a message the server took would be sent again.
pub const OVERLAP_BODY_MAX: u64 = 64 * 1024;

/// What the message needs from the server (from `Prepared`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MessageFlags {
    /// Ask for BODY=8BITMIME.
    pub eight_bit: bool,
    /// Needs SMTPUTF8.
    pub smtputf8: bool,
}

impl From<&Prepared> for MessageFlags {
    fn from(p: &Prepared) -> Self {
        MessageFlags {
            eight_bit: p.eight_bit,
            smtputf8: p.smtputf8,
        }
    }
}

/// Everything one transaction got, also when it broke off part-way: the replies before the
/// failure are kept (`batch` learns a server's recipient limit from them).
#[derive(Debug, Default)]
pub(super) struct Transaction {
    pub mail: Option<Reply>,
    /// The RCPT replies received, in order (fewer than the recipients when `error` cut
    /// them short).
    pub recipients: Vec<(String, Reply)>,
    pub data: Option<(Step, Reply)>,
    /// The failure that ended the transaction (the session is then closed).
    pub error: Option<SessionError>,
}

impl Transaction {
    /// Whether MAIL and at least one RCPT were accepted: the content may be delivered.
    fn go(&self) -> bool {
        self.mail.as_ref().is_some_and(Reply::is_positive)
            && self.recipients.iter().any(|(_, r)| r.is_positive())
    }

    /// The answers as `send_message` reports them. A failure after the verdict was already
    /// clear (the sender refused, or every recipient answered and none accepted) is not
    /// reported: the refusal is the news, not a connection the server then closed.
    pub fn into_result(self, wanted: usize) -> Result<MessageResult, SessionError> {
        let decided = match &self.mail {
            Some(m) if !m.is_positive() => true,
            Some(_) => {
                self.recipients.len() == wanted
                    && !self.recipients.iter().any(|(_, r)| r.is_positive())
            }
            None => false,
        };
        match (self.mail, self.error) {
            (Some(mail), None) => Ok(MessageResult {
                mail,
                recipients: self.recipients,
                data: if decided { None } else { self.data },
            }),
            (Some(mail), Some(_)) if decided => Ok(MessageResult {
                mail,
                recipients: self.recipients,
                data: None,
            }),
            (_, Some(e)) => Err(e),
            (None, None) => Err(SessionError::Protocol {
                step: Step::Mail,
                detail: "no reply to MAIL FROM".into(),
            }),
        }
    }

    /// `into_result`, except that a transaction the server cut short while answering the
    /// RCPTs (after the sender was accepted and at least one RCPT answered) is `Ok` with the
    /// replies received and no content verdict: how many recipients the server took before
    /// it closed is what a batching caller learns its limit from.
    pub fn into_partial_result(self, wanted: usize) -> Result<MessageResult, SessionError> {
        let cut = self.error.is_some()
            && self.mail.as_ref().is_some_and(Reply::is_positive)
            && !self.recipients.is_empty()
            && self.recipients.len() < wanted;
        match self.mail {
            Some(mail) if cut => Ok(MessageResult {
                mail,
                recipients: self.recipients,
                data: None,
            }),
            mail => Transaction { mail, ..self }.into_result(wanted),
        }
    }
}

impl Session {
    /// Send one message. Can be called again on the same session for the next message: a
    /// transaction that did not end cleanly is reset first (RSET, pipelined into the next
    /// flight when the server offers PIPELINING); one that did needs no RSET.
    /// Per-recipient refusals are in the result; `Err` means the session itself failed and
    /// should be dropped, except for `Smtputf8NotOffered` and `TooLarge`, which are checked
    /// before anything is sent. After a failure the verdict did not depend on (a refused
    /// sender, then a closed connection) the result is `Ok` and `is_open()` is false.
    pub async fn send_message(
        &mut self,
        envelope: &Envelope,
        body: &Body,
        flags: MessageFlags,
    ) -> Result<MessageResult, SessionError> {
        let t = self
            .transaction(envelope, &envelope.recipients, body, flags, false)
            .await?;
        t.into_result(envelope.recipients.len())
    }

    /// `send_message` for the session's last message: QUIT is pipelined behind the end of
    /// the message (after `BDAT … LAST` or the final `.`) and both replies are read, so
    /// closing costs no round trip of its own. The session is closed afterwards.
    pub async fn send_message_and_quit(
        mut self,
        envelope: &Envelope,
        body: &Body,
        flags: MessageFlags,
    ) -> Result<MessageResult, SessionError> {
        let t = self
            .transaction(envelope, &envelope.recipients, body, flags, true)
            .await;
        self.shutdown().await;
        t?.into_result(envelope.recipients.len())
    }

    /// One transaction of a message sent in batches (`envelope` holds this batch's
    /// recipients), with QUIT behind it when `quit`. Like `send_message` (or
    /// `send_message_and_quit`), except that when the server closes the connection while
    /// answering the RCPTs — Postfix's `421 4.7.0 too many errors` after a run of
    /// `452 4.5.3 too many recipients` — the result is `Ok` with the RCPT replies received
    /// (the last may be the 421) and no content verdict, and `is_open()` is false.
    pub async fn send_transaction(
        &mut self,
        envelope: &Envelope,
        body: &Body,
        flags: MessageFlags,
        quit: bool,
    ) -> Result<MessageResult, SessionError> {
        let t = self
            .transaction(envelope, &envelope.recipients, body, flags, quit)
            .await;
        if quit {
            self.shutdown().await;
        }
        t?.into_partial_result(envelope.recipients.len())
    }

    /// One transaction for `recipients` (the envelope gives the sender and DSN options).
    /// `Err` only for what is checked before anything is sent; everything after is in the
    /// `Transaction`, with the error that ended it, if any.
    pub(super) async fn transaction(
        &mut self,
        envelope: &Envelope,
        recipients: &[String],
        body: &Body,
        flags: MessageFlags,
        quit: bool,
    ) -> Result<Transaction, SessionError> {
        if self.unread > 0 {
            return Err(SessionError::Protocol {
                step: Step::Mail,
                detail: "a message was sent while another one's replies were unread".into(),
            });
        }
        let out = self.outgoing(envelope, recipients, body, flags)?;
        let mut t = Transaction::default();
        let result = if self.caps.pipelining {
            self.pipelined(&mut t, out, quit).await
        } else {
            // No pipelining: QUIT waits for the end-of-data reply (below).
            self.one_by_one(&mut t, out).await
        };
        Ok(self.conclude(t, result, quit).await)
    }

    /// Whether a message of `size` octets can be started (`start_transaction`) behind the
    /// transactions already written: the session is open and the whole message is one flight
    /// (PIPELINING and CHUNKING offered, BDAT in use, the body at most `FLIGHT_BODY_MAX`), and
    /// behind an unread flight the body at most `OVERLAP_BODY_MAX`.
    pub fn can_overlap(&self, size: u64) -> bool {
        !self.closed
            && self.caps.pipelining
            && self.bdat()
            && size <= FLIGHT_BODY_MAX
            && (self.unread == 0 || size <= OVERLAP_BODY_MAX)
    }

    /// Write one message's whole flight (`MAIL, RCPT…, BDAT <size> LAST` + the body) without
    /// reading any reply, also while earlier flights' replies are unread; `finish_transaction`
    /// reads them, oldest first. A flight written behind an unread one starts with RSET: the
    /// earlier transaction may yet fail, and after a failed BDAT the server's state is
    /// indeterminate until RSET (RFC 3030 §2) — a transaction left open there must never
    /// take this message's recipients. RSET costs no round trip in the flight. `Ok(None)`:
    /// nothing was written, this message cannot go that way (`can_overlap`); `Err` only for
    /// the checks before anything is written, as for `send_message`. A failed write is
    /// reported by `finish_transaction`.
    pub async fn start_transaction(
        &mut self,
        envelope: &Envelope,
        body: &Body,
        flags: MessageFlags,
    ) -> Result<Option<Flight>, SessionError> {
        // What needs no size first: a server that cannot take overlapping flights costs no
        // opening of the body here (`send` opens it).
        if self.closed || !self.caps.pipelining || !self.bdat() {
            return Ok(None);
        }
        let out = self.outgoing(envelope, &envelope.recipients, body, flags)?;
        if !self.can_overlap(out.size) {
            return Ok(None);
        }
        let flight = self.write_flight(out, false).await;
        self.unread += 1;
        Ok(Some(flight))
    }

    /// The replies to the oldest flight `start_transaction` wrote, as `send_transaction` gives
    /// them. When an earlier transaction ended with the connection failing, no reply of this
    /// one is read (they could be another command's): `Err`, and the message was not
    /// delivered. Only a 250 to its `BDAT LAST` makes a message delivered.
    pub async fn finish_transaction(
        &mut self,
        flight: Flight,
    ) -> Result<MessageResult, SessionError> {
        self.unread = self.unread.saturating_sub(1);
        let wanted = flight.recipients.len();
        if self.broken {
            self.closed = true;
            return Err(flight
                .write_error
                .unwrap_or(SessionError::Closed { step: Step::Mail }));
        }
        let mut t = Transaction::default();
        let result = self.read_flight(&mut t, flight).await;
        self.conclude(t, result, false)
            .await
            .into_partial_result(wanted)
    }

    /// What one transaction leaves for the next: the session closed after a failure (and
    /// `broken`), QUIT said when it could not go with the content, RSET owed when it did not
    /// end cleanly.
    async fn conclude(
        &mut self,
        mut t: Transaction,
        result: Result<(), SessionError>,
        quit: bool,
    ) -> Transaction {
        if let Err(e) = result {
            t.error = Some(e);
        }
        if t.error.is_some() {
            self.closed = true;
            self.broken = true;
        } else if quit && !self.closed {
            // QUIT could not go with the content (it was refused before): say it now.
            self.quit_quietly().await;
        }
        self.dirty = !matches!(&t.data, Some((Step::DataEnd, r)) if r.is_positive() && t.go());
        t
    }

    /// The checks before anything is sent (session open, SMTPUTF8, SIZE), and what the
    /// transaction will send.
    fn outgoing<'r>(
        &self,
        envelope: &Envelope,
        recipients: &'r [String],
        body: &Body,
        flags: MessageFlags,
    ) -> Result<Outgoing<'r>, SessionError> {
        if self.closed {
            return Err(SessionError::Closed { step: Step::Mail });
        }
        if flags.smtputf8 && !self.caps.smtputf8 {
            return Err(SessionError::Smtputf8NotOffered);
        }
        let file = body
            .open()
            .map_err(|e| SessionError::Body(format!("{}: {e}", body.path().display())))?;
        let size = file
            .metadata()
            .map_err(|e| SessionError::Body(format!("{}: {e}", body.path().display())))?
            .len();
        if let Some(limit) = self.caps.size
            && limit > 0
            && size > limit
        {
            return Err(SessionError::TooLarge { size, limit });
        }
        Ok(Outgoing {
            mail: self.mail_line(envelope, size, flags),
            rcpts: self.rcpt_lines(envelope, recipients),
            recipients,
            file: tokio::fs::File::from_std(file),
            size,
        })
    }

    fn mail_line(&self, envelope: &Envelope, size: u64, flags: MessageFlags) -> String {
        let mut mail = format!("MAIL FROM:<{}>", envelope.sender);
        if self.caps.size.is_some() {
            mail.push_str(&format!(" SIZE={size}"));
        }
        if flags.eight_bit && self.caps.eight_bit_mime {
            mail.push_str(" BODY=8BITMIME");
        }
        if flags.smtputf8 {
            mail.push_str(" SMTPUTF8");
        }
        if self.dsn(envelope) {
            match envelope.dsn.ret {
                Some(Ret::Full) => mail.push_str(" RET=FULL"),
                Some(Ret::Hdrs) => mail.push_str(" RET=HDRS"),
                None => {}
            }
            if let Some(id) = &envelope.dsn.envid {
                mail.push_str(&format!(" ENVID={}", xtext(id)));
            }
        }
        mail
    }

    fn rcpt_lines(&self, envelope: &Envelope, recipients: &[String]) -> Vec<Line> {
        let dsn = self.dsn(envelope);
        recipients
            .iter()
            .map(|r| {
                let mut l = format!("RCPT TO:<{r}>");
                if dsn && let Some(n) = &envelope.dsn.notify {
                    l.push_str(&format!(" NOTIFY={n} ORCPT=rfc822;{}", xtext(r)));
                }
                Line::plain(l)
            })
            .collect()
    }

    fn dsn(&self, envelope: &Envelope) -> bool {
        self.caps.dsn && envelope.dsn.is_requested()
    }

    fn bdat(&self) -> bool {
        self.cfg.chunking && self.caps.chunking
    }

    /// RFC 2920: every command up to the content in one write, the replies read in order.
    async fn pipelined(
        &mut self,
        t: &mut Transaction,
        out: Outgoing<'_>,
        quit: bool,
    ) -> Result<(), SessionError> {
        let bdat = self.bdat();
        if bdat && out.size <= FLIGHT_BODY_MAX {
            let flight = self.write_flight(out, quit).await;
            return self.read_flight(t, flight).await;
        }
        let Outgoing {
            mail,
            rcpts,
            recipients,
            mut file,
            size,
        } = out;
        let file = &mut file;
        let rset = self.dirty;
        let buf = self.envelope_commands(rset, mail, rcpts, !bdat);
        // A write that failed part-way: the server may have answered (and closed) before
        // reading everything; its replies are read below, and the reading then fails.
        let write_error = match self.write_raw(&buf, Step::Mail).await {
            Ok(()) => None,
            Err(e @ SessionError::Timeout { .. }) => return Err(e),
            Err(e) => Some(e),
        };
        self.read_envelope(t, rset, recipients).await?;
        if bdat {
            if let Some(e) = write_error {
                return Err(e);
            }
            if t.go() {
                let chunks = self.write_bdat(file, size, Vec::new(), quit).await?;
                if quit {
                    self.closed = true;
                }
                t.data = self.read_bdat_replies(chunks).await?;
                if quit {
                    self.read_quit_reply(t).await;
                }
            }
        } else {
            let reply = self
                .read_reply(Step::Data, self.cfg.command_timeout)
                .await?;
            if let Some(e) = write_error {
                return Err(e);
            }
            self.after_data_reply(t, reply, file, quit).await?;
        }
        self.no_extra_replies()
    }

    /// Write a whole message as one flight: `[RSET] MAIL, RCPT…, BDAT <size> LAST` + the body
    /// [+ `QUIT`]. RSET leads when the last transaction did not end cleanly or one is still
    /// unread (see `start_transaction`). A failed write closes the session for further
    /// flights; the replies that came before it are still read (`read_flight`).
    async fn write_flight(&mut self, out: Outgoing<'_>, quit: bool) -> Flight {
        let rset = self.dirty || self.unread > 0;
        let buf = self.envelope_commands(rset, out.mail, out.rcpts, false);
        let (recipients, mut file, size) = (out.recipients, out.file, out.size);
        let (chunks, write_error) = match self.write_bdat(&mut file, size, buf, quit).await {
            Ok(n) => (n, None),
            Err(e) => {
                self.closed = true;
                (chunks_for(size), Some(e))
            }
        };
        Flight {
            recipients: recipients.to_vec(),
            chunks,
            rset,
            quit,
            write_error,
        }
    }

    /// The replies to a flight `write_flight` wrote, in order. A refused MAIL or refused
    /// RCPTs do not stop the server from reading the BDAT octets, so every reply is read.
    async fn read_flight(&mut self, t: &mut Transaction, f: Flight) -> Result<(), SessionError> {
        let Flight {
            recipients,
            chunks,
            rset,
            quit,
            mut write_error,
        } = f;
        // A timeout or an unreadable body: the server has not got the flight, nor answered.
        if let Some(e) = write_error
            .take_if(|e| matches!(e, SessionError::Timeout { .. } | SessionError::Body(_)))
        {
            return Err(e);
        }
        self.read_envelope(t, rset, &recipients).await?;
        if write_error.is_none() && quit {
            self.closed = true;
        }
        let data = self.read_bdat_replies(chunks).await?;
        if t.go() {
            t.data = data;
        }
        if quit {
            self.read_quit_reply(t).await;
        }
        self.no_extra_replies()
    }

    /// `[RSET,] MAIL, RCPT…[, DATA]` encoded for one write.
    fn envelope_commands(
        &mut self,
        rset: bool,
        mail: String,
        rcpts: Vec<Line>,
        data: bool,
    ) -> Vec<u8> {
        let mut lines = Vec::with_capacity(rcpts.len() + 3);
        if rset {
            lines.push(Line::plain("RSET"));
        }
        lines.push(Line::plain(mail));
        lines.extend(rcpts);
        if data {
            lines.push(Line::plain("DATA"));
        }
        let mut buf = Vec::new();
        self.encode(&lines, &mut buf);
        buf
    }

    /// The replies to `[RSET,] MAIL` and the RCPTs of a pipelined flight, into `t`.
    async fn read_envelope(
        &mut self,
        t: &mut Transaction,
        rset: bool,
        recipients: &[String],
    ) -> Result<(), SessionError> {
        if rset {
            let r = self
                .read_reply(Step::Rset, self.cfg.command_timeout)
                .await?;
            expect(Step::Rset, r, |c| c == 250)?;
        }
        let mail = self
            .read_final(Step::Mail, self.cfg.command_timeout)
            .await?;
        t.mail = Some(mail);
        for r in recipients {
            let reply = self
                .read_final(Step::Rcpt, self.cfg.command_timeout)
                .await?;
            t.recipients.push((r.clone(), reply));
        }
        Ok(())
    }

    /// After the last reply of a flight: nothing more may have come, unless it is the
    /// replies to a flight still unread (or the session ended).
    fn no_extra_replies(&self) -> Result<(), SessionError> {
        if !self.closed && self.unread == 0 && !self.rbuf.is_empty() {
            return Err(SessionError::Protocol {
                step: Step::DataEnd,
                detail: "the server sent more replies than there were commands".into(),
            });
        }
        Ok(())
    }

    /// Without PIPELINING: each command waits for its reply.
    async fn one_by_one(
        &mut self,
        t: &mut Transaction,
        mut out: Outgoing<'_>,
    ) -> Result<(), SessionError> {
        if self.dirty {
            self.rset().await?;
        }
        self.send(&[Line::plain(out.mail)], Step::Mail).await?;
        let mail = self
            .read_final(Step::Mail, self.cfg.command_timeout)
            .await?;
        let refused = !mail.is_positive();
        t.mail = Some(mail);
        if refused {
            return Ok(());
        }
        for (addr, line) in out.recipients.iter().zip(out.rcpts) {
            self.send(&[line], Step::Rcpt).await?;
            let reply = self
                .read_final(Step::Rcpt, self.cfg.command_timeout)
                .await?;
            t.recipients.push((addr.clone(), reply));
        }
        if !t.go() {
            return Ok(());
        }
        if self.bdat() {
            let mut left = out.size;
            loop {
                let chunk = left.min(BDAT_CHUNK);
                let last = chunk == left;
                let mut buf = Vec::new();
                self.write_chunk(&mut out.file, chunk, last, &mut buf)
                    .await?;
                self.write_raw(&buf, Step::Data).await?;
                left -= chunk;
                let (step, wait) = self.chunk_reply_step(last);
                let r = self.read_final(step, wait).await?;
                if last || !r.is_positive() {
                    t.data = Some((step, r));
                    return Ok(());
                }
            }
        }
        self.send(&[Line::plain("DATA")], Step::Data).await?;
        let reply = self
            .read_reply(Step::Data, self.cfg.command_timeout)
            .await?;
        self.after_data_reply(t, reply, &mut out.file, false).await
    }

    /// What follows the reply to DATA: the body when it is 354 and there is someone to send
    /// it to.
    async fn after_data_reply(
        &mut self,
        t: &mut Transaction,
        reply: Reply,
        file: &mut tokio::fs::File,
        quit: bool,
    ) -> Result<(), SessionError> {
        let go = t.go();
        // Only 354 lets data follow; any other positive reply means the replies no longer
        // match the commands (a server answering more or fewer of them).
        if reply.is_positive() && reply.code != 354 {
            return Err(out_of_step(Step::Data, &reply));
        }
        if reply.code != 354 {
            if go {
                t.data = Some((Step::Data, reply));
            }
            return Ok(());
        }
        if !self.rbuf.is_empty() {
            return Err(SessionError::Protocol {
                step: Step::Data,
                detail: "the server sent more replies than there were commands".into(),
            });
        }
        if go {
            self.send_data(file, quit).await?;
            if quit {
                self.closed = true;
            }
            let r = self
                .read_final(Step::DataEnd, self.cfg.data_end_timeout)
                .await?;
            t.data = Some((Step::DataEnd, r));
            if quit {
                self.read_quit_reply(t).await;
            }
        } else {
            // RFC 2920 §3.1: DATA accepted although nothing else was: send an empty
            // message's end and forget the reply.
            self.send(&[Line::plain(".")], Step::DataEnd).await?;
            let _ = self
                .read_reply(Step::DataEnd, self.cfg.command_timeout)
                .await?;
        }
        Ok(())
    }

    /// The reply to QUIT sent behind the content. A positive reply other than 221 means
    /// the replies were out of step with the commands, so the verdict taken for the content
    /// was another command's: never a success.
    async fn read_quit_reply(&mut self, t: &mut Transaction) {
        self.closed = true;
        if let Ok(r) = self.read_reply(Step::Quit, self.quit_timeout()).await
            && r.is_positive()
            && r.code != 221
        {
            t.error = Some(out_of_step(Step::DataEnd, &r));
        }
    }

    async fn read_final(&mut self, step: Step, wait: Duration) -> Result<Reply, SessionError> {
        let r = self.read_reply(step, wait).await?;
        final_reply(step, r)
    }

    fn chunk_reply_step(&self, last: bool) -> (Step, Duration) {
        if last {
            (Step::DataEnd, self.cfg.data_end_timeout)
        } else {
            (Step::Data, self.cfg.command_timeout)
        }
    }

    /// The replies to `chunks` pipelined BDAT commands: the first refusal, else the last
    /// chunk's reply. Every reply is read, also after a refusal (the server discards the
    /// chunks already on their way and answers each).
    async fn read_bdat_replies(
        &mut self,
        chunks: usize,
    ) -> Result<Option<(Step, Reply)>, SessionError> {
        let mut verdict = None;
        for i in 0..chunks {
            let (step, wait) = self.chunk_reply_step(i + 1 == chunks);
            let r = self.read_final(step, wait).await?;
            if verdict.is_none() && (!r.is_positive() || step == Step::DataEnd) {
                verdict = Some((step, r));
            }
        }
        Ok(verdict)
    }

    /// Write `head` (commands already encoded), then the body as BDAT chunks of at most
    /// `BDAT_CHUNK` octets, the last with LAST, then QUIT when `quit` — without waiting for
    /// any reply (PIPELINING). Memory stays at about one `BODY_PIECE` whatever the size.
    /// Returns the number of chunks.
    async fn write_bdat(
        &mut self,
        file: &mut tokio::fs::File,
        size: u64,
        mut buf: Vec<u8>,
        quit: bool,
    ) -> Result<usize, SessionError> {
        let mut left = size;
        let mut chunks = 0;
        loop {
            let chunk = left.min(BDAT_CHUNK);
            let last = chunk == left;
            self.write_chunk(file, chunk, last, &mut buf).await?;
            chunks += 1;
            left -= chunk;
            if last {
                break;
            }
        }
        if quit {
            self.encode(&[Line::plain("QUIT")], &mut buf);
        }
        self.write_raw(&buf, Step::Data).await?;
        Ok(chunks)
    }

    /// Append `BDAT <len> [LAST]` and `len` octets of the body to `buf`, writing out each
    /// `BODY_PIECE` as it fills; what is left stays in `buf` for the caller to write.
    async fn write_chunk(
        &mut self,
        file: &mut tokio::fs::File,
        len: u64,
        last: bool,
        buf: &mut Vec<u8>,
    ) -> Result<(), SessionError> {
        let cmd = if last {
            format!("BDAT {len} LAST")
        } else {
            format!("BDAT {len}")
        };
        self.encode(&[Line::plain(cmd)], buf);
        let mut remaining = len;
        while remaining > 0 {
            let room = BODY_PIECE.saturating_sub(buf.len()).max(4096);
            let want = remaining.min(room as u64) as usize;
            let at = buf.len();
            buf.resize(at + want, 0);
            let n = file
                .read(&mut buf[at..])
                .await
                .map_err(|e| SessionError::Body(e.to_string()))?;
            buf.truncate(at + n);
            if n == 0 {
                return Err(SessionError::Body(
                    "the body file became shorter while sending".into(),
                ));
            }
            remaining -= n as u64;
            if buf.len() >= BODY_PIECE {
                self.write_raw(buf, Step::Data).await?;
                buf.clear();
            }
        }
        if let Some(t) = &self.cfg.transcript {
            t.line(&format!("C: [message chunk, {len} bytes]"));
        }
        Ok(())
    }

    /// The body, dot-stuffed, and the final `.`, followed by QUIT in the same write when
    /// `quit`.
    async fn send_data(
        &mut self,
        file: &mut tokio::fs::File,
        quit: bool,
    ) -> Result<(), SessionError> {
        let mut stuffer = DotStuffer::new();
        let mut buf = vec![0u8; BODY_PIECE];
        let mut out = Vec::with_capacity(BODY_PIECE + BODY_PIECE / 8);
        let mut total = 0u64;
        loop {
            let n = file
                .read(&mut buf)
                .await
                .map_err(|e| SessionError::Body(e.to_string()))?;
            if n == 0 {
                break;
            }
            total += n as u64;
            stuffer.encode(&buf[..n], &mut out);
            if out.len() >= BODY_PIECE {
                self.write_raw(&out, Step::Data).await?;
                out.clear();
            }
        }
        // The last piece, the terminator and QUIT go out in one write.
        stuffer.finish(&mut out);
        if let Some(t) = &self.cfg.transcript {
            t.line(&format!("C: [message, {total} bytes]"));
            t.line("C: .");
        }
        if quit {
            self.encode(&[Line::plain("QUIT")], &mut out);
        }
        self.write_raw(&out, Step::Data).await
    }
}

/// A message's flight written by `start_transaction`, its replies not read yet.
#[derive(Debug)]
pub struct Flight {
    /// The recipients, in the order of their RCPTs.
    recipients: Vec<String>,
    /// BDAT commands in the flight.
    chunks: usize,
    /// The flight starts with RSET.
    rset: bool,
    /// QUIT ends the flight.
    quit: bool,
    /// The write failed (the replies that came before are read, then this is the result).
    write_error: Option<SessionError>,
}

/// What one transaction sends: its commands and its content.
struct Outgoing<'a> {
    mail: String,
    rcpts: Vec<Line>,
    recipients: &'a [String],
    file: tokio::fs::File,
    size: u64,
}

/// How many BDAT chunks a body of `size` octets goes in.
fn chunks_for(size: u64) -> usize {
    (size.div_ceil(BDAT_CHUNK)).max(1) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_counts() {
        assert_eq!(chunks_for(0), 1);
        assert_eq!(chunks_for(1), 1);
        assert_eq!(chunks_for(BDAT_CHUNK), 1);
        assert_eq!(chunks_for(BDAT_CHUNK + 1), 2);
    }
}
