// The teller's transactions in the call page (docs/workflow.md): create one, follow its state live
// (`transaction` messages), see the customer's signature, approve — the server answers with the
// checks that fail and what to do — reject, and see the delivery to the core bank.
import { get, post } from '/static/common/api.js';
import { clearText, t, translate } from '/static/common/i18n.js';
import { actionButton, errorText, formatTime, toast, showErrorText } from '/static/common/ui.js';
import {
  REJECT_REASON_MIN, SIGNABLE, deliveryText, parseAmount, renderChecks, showDescription, showState,
} from '/static/common/transactions.js';

const $ = (id) => document.getElementById(id);
const OPEN = new Set([...SIGNABLE, 'awaiting_second_approval']);
// The core bank's webhook answers in the background: while a delivery is on its way, the
// teller's line follows it without a reload.
const DELIVERY_POLL_MS = 4000;

export class TransactionPanel {
  #sessionId;
  #canControl;
  #items = new Map(); // id -> {view, element}
  #deliveryPolls = new Map(); // id -> timeout

  constructor({ call, sessionId, canControl }) {
    this.#sessionId = sessionId;
    this.#canControl = canControl;
    $('tx-form').hidden = !canControl;
    if (canControl) this.#wireForm();
    call.on('transaction', (view) => this.#show(view));
    call.on('joined', () => this.refresh());
  }

  async refresh() {
    try {
      const { transactions } = await get(`/api/v1/sessions/${encodeURIComponent(this.#sessionId)}/transactions`);
      for (const view of transactions) this.#show(view);
    } catch (err) {
      toast(errorText(err), 'error');
    }
  }

  #wireForm() {
    const kind = $('tx-kind');
    const sync = () => {
      $('tx-purchase-fields').hidden = kind.value !== 'purchase';
      $('tx-service-fields').hidden = kind.value !== 'service';
    };
    kind.addEventListener('change', sync);
    sync();
    $('tx-form').addEventListener('submit', async (event) => {
      event.preventDefault();
      const error = $('tx-form-error');
      clearText(error);
      const request = this.#request();
      if (!request) return translate(error, 'tx.badAmount');
      $('tx-create').disabled = true;
      try {
        const { transaction } = await post(`/api/v1/sessions/${encodeURIComponent(this.#sessionId)}/transactions`, { transaction: request });
        this.#show(transaction);
        $('tx-form').reset();
        sync();
      } catch (err) {
        showErrorText(error, err);
      } finally {
        $('tx-create').disabled = false;
      }
    });
  }

  #request() {
    const account = $('tx-account').value.trim();
    if ($('tx-kind').value === 'service') {
      const details = $('tx-details').value.trim();
      return {
        kind: 'service',
        service: $('tx-service').value,
        account,
        details: details ? { description: details.slice(0, 200) } : {},
      };
    }
    const minor = parseAmount($('tx-amount').value);
    if (minor === null) return null;
    return {
      kind: 'purchase',
      product_type: $('tx-product-type').value,
      product_code: $('tx-product-code').value.trim(),
      product_name: $('tx-product-name').value.trim(),
      amount: { minor, currency: $('tx-currency').value },
      account,
    };
  }

  #show(view) {
    let item = this.#items.get(view.id);
    if (!item) {
      item = { element: this.#element(view.id) };
      this.#items.set(view.id, item);
      $('tx-list').prepend(item.element);
    }
    item.view = view;
    $('tx-none').hidden = true;
    const el = item.element;
    showDescription(el.querySelector('.tx-summary'), view.transaction);
    el.querySelector('.tx-meta').textContent = `${view.id} · ${formatTime(view.created_at)} · ${view.sha256.slice(0, 12)}`;
    showState(el.querySelector('.tx-state'), view.state);
    const image = el.querySelector('.tx-signature');
    image.hidden = !view.signature;
    // The image is fetched again only when the signature changes (its hash is in the URL).
    if (view.signature && image.dataset.sha256 !== view.signature.sha256) {
      image.dataset.sha256 = view.signature.sha256;
      image.src = `/api/v1/transactions/${encodeURIComponent(view.id)}/signature.png?h=${view.signature.sha256.slice(0, 16)}`;
    }
    const open = OPEN.has(view.state);
    el.querySelector('.tx-approve').hidden = !this.#canControl || !SIGNABLE.has(view.state);
    el.querySelector('.tx-reject').hidden = !this.#canControl || !open;
    if (!open) el.querySelector('.tx-reject-form').hidden = true;
    if (view.checks) renderChecks(el.querySelector('.tx-checks'), view.checks.filter((c) => !c.passed));
    if (!open) this.#detail(view.id);
  }

  /** Approved or rejected: the signed record's hash and the delivery status come from the detail. */
  async #detail(id) {
    const el = this.#items.get(id).element;
    try {
      const { transaction } = await get(`/api/v1/transactions/${encodeURIComponent(id)}`);
      el.querySelector('.tx-checks').hidden = true;
      const line = el.querySelector('.tx-delivery');
      line.textContent = transaction.approval
        ? `${t('tx.approvedSigned', { hash: transaction.approval.signature.slice(0, 16) })} · ${deliveryText(transaction.delivery)}`
        : '';
      clearTimeout(this.#deliveryPolls.get(id));
      if (transaction.delivery?.state === 'pending') {
        this.#deliveryPolls.set(id, setTimeout(() => this.#detail(id), DELIVERY_POLL_MS));
      }
    } catch (err) {
      toast(errorText(err), 'error');
    }
  }

  #element(id) {
    const li = document.createElement('li');
    li.className = 'tx-item';
    li.dataset.id = id;
    li.innerHTML = `
      <p class="tx-state" role="status"></p>
      <p class="tx-summary"></p>
      <p class="tx-meta"></p>
      <img class="tx-signature" alt="" hidden>
      <ul class="tx-checks" hidden aria-live="polite"></ul>
      <p class="tx-delivery"></p>
      <div class="recording-actions"></div>`;
    li.querySelector('.tx-signature').setAttribute('alt', t('tx.signaturePreview'));
    const approve = actionButton('tx.approve', 'btn btn-primary tx-approve', () => this.#approve(id));
    const reject = document.createElement('button');
    reject.type = 'button';
    reject.className = 'btn btn-secondary tx-reject';
    translate(reject, 'tx.reject');
    approve.hidden = true;
    reject.hidden = true;
    const form = this.#rejectForm(id);
    reject.addEventListener('click', () => {
      form.hidden = false;
      form.querySelector('textarea').focus();
    });
    li.querySelector('.recording-actions').append(approve, reject);
    li.append(form);
    return li;
  }

  /** The reason asked for before a rejection, in the item itself. */
  #rejectForm(id) {
    const form = document.createElement('div');
    form.className = 'tx-reject-form';
    form.hidden = true;
    const label = document.createElement('label');
    label.htmlFor = `tx-reject-reason-${id}`;
    translate(label, 'tx.rejectReason');
    const reason = document.createElement('textarea');
    reason.id = label.htmlFor;
    reason.className = 'tx-reject-reason';
    reason.dataset.field = 'reason';
    reason.rows = 2;
    reason.maxLength = 1000;
    const error = document.createElement('p');
    error.className = 'form-error';
    error.setAttribute('role', 'alert');
    const actions = document.createElement('div');
    actions.className = 'recording-actions';
    const cancel = document.createElement('button');
    cancel.type = 'button';
    cancel.className = 'btn btn-secondary';
    translate(cancel, 'ui.cancel');
    cancel.addEventListener('click', () => {
      form.hidden = true;
      clearText(error);
    });
    actions.append(
      actionButton('tx.rejectConfirm', 'btn btn-danger tx-reject-confirm', () => this.#reject(id, reason, error)),
      cancel,
    );
    form.append(label, reason, error, actions);
    return form;
  }

  async #approve(id) {
    try {
      const result = await post(`/api/v1/transactions/${encodeURIComponent(id)}/approve`);
      this.#show({ ...result.transaction, checks: result.checks });
    } catch (err) {
      toast(errorText(err), 'error');
      // 409 checks_failed: which checks fail is in the body; the detail has them too.
      if (err.code === 'checks_failed') await this.#failing(id);
    }
  }

  async #failing(id) {
    const { transaction } = await get(`/api/v1/transactions/${encodeURIComponent(id)}`);
    this.#show(transaction);
  }

  async #reject(id, reason, error) {
    const text = reason.value.trim();
    if (text.length < REJECT_REASON_MIN) {
      translate(error, 'error.reason_too_short');
      reason.focus();
      return;
    }
    clearText(error);
    try {
      const { transaction } = await post(`/api/v1/transactions/${encodeURIComponent(id)}/reject`, { reason: text });
      reason.value = '';
      this.#show(transaction);
    } catch (err) {
      showErrorText(error, err);
    }
  }
}
