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

  const open = (view) => {
    current = view;
    showDescription($('tx-sign-summary'), view.transaction);
    translate($('tx-sign-account'), 'txSign.account', { account: view.transaction.account });
    const details = Object.values(view.transaction.details ?? {}).join('；');
    $('tx-sign-details').textContent = details;
    $('tx-sign-details').hidden = !details;
    $('tx-sign-again').hidden = !view.signed;
    clearText(error);
    pad.clear();
    submit.disabled = false;
    if (!dialog.open) dialog.showModal();
    $('tx-sign-title').focus();
  };
  const close = () => {
    current = null;
    if (dialog.open) dialog.close();
  };
  const refreshOpenButton = () => { $('tx-sign-open').hidden = pending.size === 0 || dialog.open; };

  const follow = (view) => {
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
  $('tx-sign-open').addEventListener('click', () => {
    const latest = [...pending.values()].at(-1);
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
    if (!current) return;
    if (pad.strokes === 0) return translate(error, 'txSign.empty');
    submit.disabled = true;
    translate(error, 'txSign.sending');
    try {
      const blob = await pad.png();
      const { transaction } = await postBlob(`/api/v1/transactions/${encodeURIComponent(current.id)}/signature`, blob);
      pending.set(transaction.id, transaction);
      close();
      toast(t('txSign.done'), 'success');
    } catch (err) {
      showErrorText(error, err);
      submit.disabled = false;
    }
    refreshOpenButton();
  });
}
