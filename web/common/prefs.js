// localStorage can throw (disabled storage, privacy modes); preferences are a convenience, never fatal.
export function loadPref(key) {
  try {
    return localStorage.getItem(`vteller.${key}`);
  } catch {
    return null;
  }
}

export function savePref(key, value) {
  try {
    localStorage.setItem(`vteller.${key}`, value);
  } catch {
    /* preference simply not remembered */
  }
}
