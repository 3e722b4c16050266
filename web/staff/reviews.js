// The supervisor's review queue (docs/compliance.md, "After the call"): the moments the
// after-call analysis could not decide. Each item shows what the analysis found, links to the
// auditor portal at that moment of the recording, and takes a decision with a written note.
import { get, post } from '/static/common/api.js';
import { clearText, t, translate } from '/static/common/i18n.js';
import { actionButton as button, formatTime, toast, showErrorText } from '/static/common/ui.js';
import { supervisorPanel } from '/static/staff/poller.js';

const $ = (id) => document.getElementById(id);
const REFRESH_MS = 15000;
const MIN_NOTE = 4; // as the API's ReviewBody
const MAX_EXCERPT = 3; // transcript segments shown per line; the full report has the rest

// A signed report never changes: each archive's is fetched once per page.
const reports = new Map();

const panel = supervisorPanel({
  panelId: 'reviews-panel',
  rowsId: 'reviews-list',
  onHide: () => reports.clear(),
  load: async () => {
    const { reviews } = await get('/api/v1/reviews?state=open');
    const moments = await momentsOf(reviews);
    render(reviews, moments);
  },
  errorId: 'reviews-error',
  everyMs: REFRESH_MS,
  // A supervisor writing a note keeps what they wrote: no refresh while a note has text.
  skip: () => [...document.querySelectorAll('.review-note')].some((el) => el.value.trim()),
});
export const { show, hide } = panel;

/** The report's moment for each review (undefined where the report cannot be read). */
async function momentsOf(reviews) {
  const archives = [...new Set(reviews.map((r) => r.archive_id))];
  await Promise.all(archives.filter((id) => !reports.has(id)).map(async (id) => {
    try {
      const { report } = await get(`/api/v1/archives/${encodeURIComponent(id)}/report`);
      reports.set(id, new Map((report.moments ?? []).map((m) => [m.id, m])));
    } catch {
      // The review still shows its own reasons; the report is tried again on the next refresh.
    }
  }));
  return reviews.map((r) => reports.get(r.archive_id)?.get(r.moment));
}

function render(reviews, moments) {
  $('reviews-list').replaceChildren(...reviews.map((review, i) => item(review, moments[i])));
  $('reviews-empty').hidden = reviews.length > 0;
}

function text(tag, className, content) {
  const el = document.createElement(tag);
  el.className = className;
  el.textContent = content;
  return el;
}

function clock(ms) {
  const seconds = Math.floor(ms / 1000);
  return `${Math.floor(seconds / 60)}:${String(seconds % 60).padStart(2, '0')}`;
}

function item(review, moment) {
  const li = document.createElement('li');
  li.className = 'approval-item review-item';
  li.dataset.id = String(review.id);
  li.dataset.archive = review.archive_id;
  li.dataset.moment = review.moment;
  const title = text('p', 'tx-summary review-title', moment?.title ? `${moment.title}（${review.moment}）` : review.moment);
  const meta = document.createElement('p');
  meta.className = 'tx-meta';
  translate(meta, 'review.meta', {
    session: review.session_id,
    archive: review.archive_id,
    time: formatTime(review.created_at),
  });
  const span = document.createElement('p');
  span.className = 'muted';
  if (moment?.span_ms) translate(span, 'review.span', { from: clock(moment.span_ms[0]), to: clock(moment.span_ms[1]) });
  else translate(span, 'review.unmarked');
  const reasons = document.createElement('ul');
  reasons.className = 'tx-checks review-reasons';
  reasons.append(...(moment?.reasons ?? review.reasons).map((reason) => text('li', '', reason)));
  const play = document.createElement('a');
  play.className = 'btn btn-secondary review-play';
  play.href = `/auditor/?${new URLSearchParams({ archive: review.archive_id, moment: review.moment })}`;
  translate(play, 'review.play');
  const playRow = document.createElement('p');
  playRow.append(play);
  const field = document.createElement('div');
  field.className = 'field';
  const label = document.createElement('label');
  label.htmlFor = `review-note-${review.id}`;
  translate(label, 'review.note');
  const note = document.createElement('textarea');
  note.id = `review-note-${review.id}`;
  note.className = 'review-note';
  note.dataset.field = 'note';
  note.rows = 2;
  note.maxLength = 1000;
  field.append(label, note);
  const error = text('p', 'form-error review-error', '');
  error.setAttribute('role', 'alert');
  const actions = document.createElement('div');
  actions.className = 'recording-actions';
  actions.append(
    button('review.approve', 'btn btn-primary review-approve', () => decide(review.id, 'approved', note, error)),
    button('review.reject', 'btn btn-danger review-reject', () => decide(review.id, 'rejected', note, error)),
  );
  li.append(title, meta, span, reasons, ...evidence(moment), playRow, field, error, actions);
  return li;
}

/** What each party said in the moment, as the analysis heard it, and its findings per line. */
function evidence(moment) {
  return (moment?.lines ?? []).map((line) => {
    const box = document.createElement('div');
    box.className = 'review-line';
    box.dataset.speaker = line.speaker;
    const heard = (line.transcript ?? []).slice(0, MAX_EXCERPT).map((s) => s.text).join(' ');
    const said = document.createElement('p');
    translate(said, heard ? 'review.heard' : 'review.heardNothing', { who: { t: `review.speaker.${line.speaker}` }, text: heard });
    const findings = document.createElement('ul');
    findings.className = 'tx-checks';
    findings.append(...(line.reasons ?? []).map((reason) => text('li', '', reason)));
    box.append(said, findings);
    return box;
  });
}

async function decide(id, decision, noteField, error) {
  clearText(error);
  const note = noteField.value.trim();
  if (note.length < MIN_NOTE) {
    translate(error, 'review.noteTooShort');
    noteField.focus();
    return;
  }
  // Approve and reject are separate requests: while one is on its way, neither can be sent
  // (the second would be refused as already decided).
  const buttons = [...noteField.closest('li').querySelectorAll('button')];
  for (const el of buttons) el.disabled = true;
  try {
    await post(`/api/v1/reviews/${encodeURIComponent(id)}`, { decision, note });
    toast(t(decision === 'approved' ? 'review.approved' : 'review.rejected'), 'success');
    // Gone at once, even when another item's unsent note holds the refresh back.
    noteField.closest('li').remove();
    $('reviews-empty').hidden = $('reviews-list').children.length > 0;
    await panel.refresh();
  } catch (err) {
    for (const el of buttons) el.disabled = false;
    showErrorText(error, err);
  }
}
