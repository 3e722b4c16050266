// The periodic refresh of a staff panel: one request at a time, none while the browser tab is
// hidden or once the panel is stopped. A failed refresh shows in the panel's error line (its own:
// actions report elsewhere), and the next successful one clears it.
import { clearText } from '/static/common/i18n.js';
import { showErrorText } from '/static/common/ui.js';

export function poller({ load, errorId, everyMs, skip = () => false }) {
  let timer = null;
  let busy = false;

  async function refresh() {
    if (busy || document.hidden || timer === null || skip()) return;
    busy = true;
    try {
      await load();
      clearText(document.getElementById(errorId));
    } catch (err) {
      showErrorText(document.getElementById(errorId), err);
    } finally {
      busy = false;
    }
  }

  return {
    refresh,
    start() {
      clearInterval(timer);
      timer = setInterval(refresh, everyMs);
      refresh();
    },
    stop() {
      clearInterval(timer);
      timer = null;
    },
  };
}
