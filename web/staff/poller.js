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

/** A supervisor's panel refreshed by a poller (the options above): shown to supervisors only,
 * emptied when hidden; `onHide` forgets what else the panel keeps. Returns show, hide, refresh. */
export function supervisorPanel({ panelId, rowsId, onHide = () => {}, ...polling }) {
  const { start, stop, refresh } = poller(polling);
  function hide() {
    stop();
    onHide();
    document.getElementById(panelId).hidden = true;
    document.getElementById(rowsId).replaceChildren();
  }
  function show(user) {
    hide();
    if (user.role !== 'supervisor') return;
    document.getElementById(panelId).hidden = false;
    start();
  }
  return { show, hide, refresh };
}
