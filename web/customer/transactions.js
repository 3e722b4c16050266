// The customer's review and signature of a transaction (docs/workflow.md): when the teller sends
// one, a full-screen question shows what is bought or changed in large text and a signature pad;
// "确认签名" uploads the drawing as a PNG over HTTP (the answer says when it is blank).
import { get, postBlob } from '/static/common/api.js';
import { clearText, t, translate } from '/static/common/i18n.js';
import { errorText, toast, showErrorText } from '/static/common/ui.js';
import { SIGNABLE, showDescription } from '/static/common/transactions.js';

const $ = (id) => document.getElementById(id);
// The pad's own pixels: enough for a steady line, well within the server's caps.
const PAD_WIDTH = 1000;
const PAD_HEIGHT = 400;
const LINE_WIDTH = 7;

/** A canvas the customer draws on with a finger, pen or mouse. */
class SignaturePad {
  #canvas;
  #context;
  #last = null;
  strokes = 0;

  constructor(canvas) {
    this.#canvas = canvas;
    canvas.width = PAD_WIDTH;
    canvas.height = PAD_HEIGHT;
    this.#context = canvas.getContext('2d');
    canvas.addEventListener('pointerdown', (event) => {
      canvas.setPointerCapture(event.pointerId);
      this.#last = this.#point(event);
      this.#dot(this.#last);
      this.strokes += 1;
    });
    canvas.addEventListener('pointermove', (event) => {
      if (!this.#last) return;
      const next = this.#point(event);
      const ctx = this.#context;
      ctx.lineWidth = LINE_WIDTH;
      ctx.lineCap = 'round';
      ctx.lineJoin = 'round';
      ctx.strokeStyle = '#000';
      ctx.beginPath();
      ctx.moveTo(this.#last.x, this.#last.y);
      ctx.lineTo(next.x, next.y);
      ctx.stroke();
      this.#last = next;
    });
    for (const type of ['pointerup', 'pointercancel', 'pointerleave']) {
      canvas.addEventListener(type, () => { this.#last = null; });
    }
    this.clear();
  }

  clear() {
    const ctx = this.#context;
    ctx.fillStyle = '#fff';
    ctx.fillRect(0, 0, PAD_WIDTH, PAD_HEIGHT);
    this.strokes = 0;
  }

  png() {
    return new Promise((resolve) => this.#canvas.toBlob(resolve, 'image/png'));
  }

  #point(event) {
    const box = this.#canvas.getBoundingClientRect();
    return {
      x: ((event.clientX - box.left) / box.width) * PAD_WIDTH,
      y: ((event.clientY - box.top) / box.height) * PAD_HEIGHT,
    };
  }

  #dot({ x, y }) {
    const ctx = this.#context;
    ctx.fillStyle = '#000';
    ctx.beginPath();
    ctx.arc(x, y, LINE_WIDTH / 2, 0, Math.PI * 2);
    ctx.fill();
  }
}

export function wireCustomerTransactions(call, sessionId) {
  const dialog = $('tx-sign');
  const pad = new SignaturePad($('tx-sign-pad'));
  const error = $('tx-sign-error');
  const submit = $('tx-sign-submit');
  const pending = new Map(); // id -> customer view, while it may be signed
  let current = null;
  let uploading = false;
  let over = false;

  const open = (view) => {
    const showing = dialog.open && current?.id === view.id;
    current = view;
    // Reported again (every reconnect reloads the list): the half-drawn signature stays.
    if (showing) return;
    showDescription($('tx-sign-summary'), view.transaction);
    translate($('tx-sign-account'), 'txSign.account', { account: view.transaction.account });
    const details = Object.values(view.transaction.details ?? {}).join('；');
    $('tx-sign-details').textContent = details;
    $('tx-sign-details').hidden = !details;
    $('tx-sign-again').hidden = !view.signed;
    clearText(error);
    pad.clear();
    submit.disabled = uploading;
    if (!dialog.open) dialog.showModal();
    $('tx-sign-title').focus();
  };
  const close = () => {
    current = null;
    if (dialog.open) dialog.close();
  };
  const unsigned = () => [...pending.values()].filter((view) => !view.signed);
  const refreshOpenButton = () => {
    const button = $('tx-sign-open');
    button.hidden = pending.size === 0 || dialog.open;
    // Once signed, signing again is only for when the teller asks: a quieter button that says so.
    const needed = unsigned().length > 0;
    translate(button, needed ? 'txSign.open' : 'txSign.openAgain');
    button.classList.toggle('btn-primary', needed);
    button.classList.toggle('btn-secondary', !needed);
  };

  const follow = (view) => {
    if (over) return;
    if (SIGNABLE.has(view.state)) pending.set(view.id, view);
    else pending.delete(view.id);
    if (view.state === 'awaiting_signature' && !view.signed) open(view);
    else if (current?.id === view.id && !SIGNABLE.has(view.state)) close();
    refreshOpenButton();
  };
  call.on('transaction', follow);
  // After a reload the page asks for what still waits for a signature.
  call.on('joined', async () => {
    try {
      const { transactions } = await get(`/api/v1/sessions/${encodeURIComponent(sessionId)}/transactions`);
      for (const view of transactions) follow(view);
    } catch (err) {
      toast(errorText(err), 'error');
    }
  });
  // The call is over: nothing can be signed any more, and the page behind must be seen.
  const finish = () => {
    over = true;
    pending.clear();
    close();
    refreshOpenButton();
  };
  call.on('ended', finish);
  call.on('fatal', finish);
  $('tx-sign-open').addEventListener('click', () => {
    const latest = unsigned().at(-1) ?? [...pending.values()].at(-1);
    if (latest) open(latest);
    refreshOpenButton();
  });
  $('tx-sign-clear').addEventListener('click', () => {
    pad.clear();
    clearText(error);
  });
  $('tx-sign-later').addEventListener('click', () => {
    close();
    refreshOpenButton();
  });
  dialog.addEventListener('cancel', (event) => event.preventDefault());
  submit.addEventListener('click', async () => {
    if (!current || uploading) return;
    if (pad.strokes === 0) return translate(error, 'txSign.empty');
    const { id } = current;
    uploading = true;
    submit.disabled = true;
    translate(error, 'txSign.sending');
    try {
      const blob = await pad.png();
      const { transaction } = await postBlob(`/api/v1/transactions/${encodeURIComponent(id)}/signature`, blob);
      if (!over) pending.set(transaction.id, transaction);
      if (current?.id === id) close();
      toast(t('txSign.done'), 'success');
    } catch (err) {
      if (current?.id === id) showErrorText(error, err);
      else if (!over) toast(errorText(err), 'error');
    } finally {
      uploading = false;
      submit.disabled = false;
    }
    refreshOpenButton();
  });
}
