// The teller's transactions in the call page (docs/workflow.md): create one, follow its state live
// (`transaction` messages), see the customer's signature, approve — the server answers with the
// checks that fail and what to do — reject, and see the delivery to the core bank.
import { get, post } from '/static/common/api.js';
import { clearText, t, translate } from '/static/common/i18n.js';
import { errorText, formatTime, toast, showErrorText } from '/static/common/ui.js';
import { SIGNABLE, deliveryText, parseAmount, renderChecks, showDescription, showState } from '/static/common/transactions.js';

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
      <div class="recording-actions">
        <button type="button" class="btn btn-primary tx-approve" hidden data-i18n="tx.approve"></button>
        <button type="button" class="btn btn-secondary tx-reject" hidden data-i18n="tx.reject"></button>
      </div>`;
    translate(li.querySelector('.tx-approve'), 'tx.approve');
    translate(li.querySelector('.tx-reject'), 'tx.reject');
    li.querySelector('.tx-signature').setAttribute('alt', t('tx.signaturePreview'));
    li.querySelector('.tx-approve').addEventListener('click', () => this.#approve(id));
    li.querySelector('.tx-reject').addEventListener('click', () => this.#reject(id));
    return li;
  }

  async #approve(id) {
    const el = this.#items.get(id).element;
    const button = el.querySelector('.tx-approve');
    button.disabled = true;
    try {
      const result = await post(`/api/v1/transactions/${encodeURIComponent(id)}/approve`);
      this.#show({ ...result.transaction, checks: result.checks });
    } catch (err) {
      toast(errorText(err), 'error');
      // 409 checks_failed: which checks fail is in the body; the detail has them too.
      if (err.code === 'checks_failed') await this.#failing(id);
    } finally {
      button.disabled = false;
    }
  }

  async #failing(id) {
    const { transaction } = await get(`/api/v1/transactions/${encodeURIComponent(id)}`);
    this.#show(transaction);
  }

  async #reject(id) {
    const reason = window.prompt(t('tx.rejectReason'));
    if (!reason || reason.trim().length < 4) return;
    try {
      const { transaction } = await post(`/api/v1/transactions/${encodeURIComponent(id)}/reject`, { reason: reason.trim() });
      this.#show(transaction);
    } catch (err) {
      toast(errorText(err), 'error');
    }
  }
}
