// All user-visible strings. Elements carry data-i18n="key" (text), data-i18n-args (JSON, see t()),
// data-i18n-placeholder / data-i18n-aria-label / data-i18n-title (attributes); applyI18n() fills
// them, so switching language re-translates everything, including dynamically created elements.
import { loadPref, savePref } from './prefs.js';

const zhCN = {
  'app.name': 'vteller 远程视频银行',
  'ui.skipToContent': '跳到主要内容',
  'ui.largeText': '大字模式',
  'ui.switchLang': 'English',
  'ui.switchLangLabel': 'Switch to English',
  'ui.retry': '重试',
  'ui.cancel': '取消',

  'role.customer': '客户',
  'role.teller': '客户经理',
  'role.expert': '专家',
  'role.supervisor': '主管',
  'role.auditor': '审计员',
  'role.admin': '管理员',
  'business.wealth': '理财产品',
  'business.insurance': '保险',
  'business.general': '综合业务',
  'state.waiting': '等待客户',
  'state.active': '通话中',
  'state.ended': '已结束',
  'state.interrupted': '已中断',

  'customer.pageTitle': '视频银行服务',
  'customer.checkingLink': '正在验证您的链接…',
  'customer.errorTitle': '无法进入视频服务',
  'customer.deviceTitle': '检查摄像头和麦克风',
  'customer.welcome': '{teller}邀请您通过视频办理{business}。请确认能在下方看到自己的画面。',
  'customer.micLevel': '麦克风音量',
  'customer.deviceStarting': '正在打开摄像头和麦克风，如浏览器询问，请点击“允许”。',
  'customer.deviceReady': '摄像头已打开。请说句话，看看音量条是否跳动。',
  'customer.deviceHeard': '摄像头和麦克风都正常，请点击“进入等候室”。',
  'customer.enter': '进入等候室',
  'customer.lobbyTitle': '请稍候，客户经理马上为您服务',
  'customer.lobbyHint': '请保持本页面打开，不要关闭或刷新。',
  'customer.callTitle': '视频通话',
  'customer.endedTitle': '通话已结束',
  'customer.endedBody': '感谢您的使用，您现在可以关闭此页面。',

  'join.invitation_unknown': '此链接无效，请联系您的客户经理获取新链接。',
  'join.invitation_expired': '此链接已失效，请联系您的客户经理获取新链接。',
  'join.invitation_used': '此链接已被使用，请联系您的客户经理获取新链接。',
  'join.session_ended': '本次视频服务已结束。如需继续办理，请联系您的客户经理。',
  'join.replaced': '您已在另一个窗口或设备上打开了视频通话，本页面已停止。',
  'join.connection_lost': '网络连接已中断。请检查网络后点击“重试”。',
  'join.network': '无法连接到服务器，请检查网络后点击“重试”。',
  'join.other': '暂时无法打开视频服务，请稍后点击“重试”。',

  'media.not_found': '没有找到摄像头或麦克风。请连接设备（或换一台有摄像头的手机/电脑）后点击“重试”。',
  'media.denied': '浏览器没有获得摄像头和麦克风的使用权限。请点击地址栏左侧的锁形图标，选择“允许”摄像头和麦克风，然后点击“重试”。',
  'media.in_use': '摄像头或麦克风正被其他程序占用。请关闭其他视频软件后点击“重试”。',
  'media.insecure': '当前页面不安全，无法使用摄像头。请使用客户经理发送的完整链接（以 https 开头）打开。',
  'media.other': '无法打开摄像头或麦克风，请点击“重试”。',

  'status.connecting': '正在连接…',
  'status.connected': '已连接',
  'status.reconnecting': '网络中断，正在重新连接…',
  'status.disconnected': '连接已断开',

  'call.you': '我',
  'call.controls': '通话控制',
  'call.mute': '静音',
  'call.unmute': '取消静音',
  'call.cameraOff': '关闭摄像头',
  'call.cameraOn': '打开摄像头',
  'call.end': '结束通话',
  'call.endConfirmTitle': '确定要结束通话吗？',
  'call.endConfirmBody': '结束后所有参与者都将离开本次视频服务。',
  'call.enableSound': '点击开启声音',
  'call.participantReconnecting': '网络不稳定，正在重新连接…',
  'call.screenOf': '共享的屏幕',

  'chat.title': '文字消息',
  'chat.label': '输入消息',
  'chat.placeholder': '在此输入文字…',
  'chat.send': '发送',

  'error.generic': '操作失败，请稍后重试。',
  'error.network': '无法连接到服务器，请检查网络。',
  'error.not_connected': '网络已断开，消息未发送。',
  'error.csrf_failed': '页面已过期，请刷新后重试。',
  'error.bad_origin': '请求来源不被允许，请直接从银行发送的链接进入。',
  'error.not_authenticated': '登录已过期，请重新登录。',
  'error.forbidden': '您没有执行此操作的权限。',
  'error.rate_limited': '操作过于频繁，请稍后再试。',
  'error.invalid_credentials': '用户名或密码错误。',
  'error.unknown_user': '找不到该用户。',
  'error.already_invited': '该专家已被邀请。',
  'error.session_ended': '本次通话已结束。',
  'error.unknown_session': '找不到该通话。',
  'error.internal': '服务器出现问题，请稍后重试。',

  'staff.pageTitle': 'vteller 员工工作台',
  'staff.brand': 'vteller 员工工作台',
  'staff.logout': '退出登录',
  'staff.infoTitle': '您的权限',
  'staff.info.auditor': '审计员在审计系统中检索、核验和回放已归档的双录记录。本工作台用于视频通话，您无需在此操作。',
  'staff.info.admin': '管理员负责创建和停用员工账号。本工作台用于视频通话，您无需在此操作。',

  'login.title': '员工登录',
  'login.username': '用户名',
  'login.password': '密码',
  'login.submit': '登录',
  'login.missing': '请输入用户名和密码。',
  'login.invalid': '用户名或密码错误，请重新输入。',
  'login.rateLimited': '登录失败次数过多，请在 {minutes} 分钟后再试。',

  'invite.title': '邀请客户视频办理',
  'invite.business': '业务类型',
  'invite.customerName': '客户姓名（选填）',
  'invite.ttl': '链接有效期',
  'invite.ttl15': '15 分钟',
  'invite.ttl30': '30 分钟',
  'invite.ttl60': '1 小时',
  'invite.ttl240': '4 小时',
  'invite.ttl1440': '24 小时',
  'invite.create': '生成邀请链接',
  'invite.resultLabel': '请将以下链接发送给客户：',
  'invite.copy': '复制链接',
  'invite.copied': '链接已复制。',
  'invite.copyManual': '无法自动复制，链接已选中，请按 Ctrl+C 复制。',
  'invite.expires': '有效期至 {time}',
  'invite.onceOnly': '链接只显示这一次，且只能使用一次。',

  'sessions.autoRefresh': '每 3 秒自动刷新',
  'sessions.titleTeller': '我的视频会话',
  'sessions.titleExpert': '邀请我的会话',
  'sessions.titleSupervisor': '进行中的会话',
  'sessions.emptyTeller': '暂无会话。生成邀请链接后，会话会显示在这里。',
  'sessions.emptyExpert': '暂时没有客户经理邀请您。',
  'sessions.emptySupervisor': '当前没有进行中的会话。',
  'sessions.customer': '客户',
  'sessions.business': '业务',
  'sessions.teller': '客户经理',
  'sessions.state': '状态',
  'sessions.customerConnection': '客户在线',
  'sessions.created': '创建时间',
  'sessions.action': '操作',
  'sessions.open': '进入',
  'sessions.join': '加入',
  'sessions.observe': '旁听',
  'sessions.online': '在线',
  'sessions.reconnecting': '重新连接中',
  'sessions.customerLeft': '已离开',
  'sessions.notJoined': '未进入',
  'sessions.unnamed': '（未填写姓名）',

  'staffCall.pageTitle': '视频通话 - vteller',
  'staffCall.back': '返回工作台',
  'staffCall.heading': '{customer} · {business}',
  'staffCall.observerPresent': '主管旁听中',
  'staffCall.waiting': '等待其他参与者加入…',
  'staffCall.shareScreen': '共享屏幕',
  'staffCall.stopShare': '停止共享',
  'staffCall.inviteExpert': '邀请专家',
  'staffCall.leave': '离开通话',
  'staffCall.endedTitle': '通话已结束',
  'staffCall.endedBody': '本次视频会话已结束，记录已保存。',
  'staffCall.endedByYou': '您已结束本次视频会话，记录已保存。',
  'staffCall.endedBy': '{name}（{role}）结束了本次视频会话。',
  'staffCall.endedShutdown': '服务器正在维护，通话已中止。',
  'staffCall.leftTitle': '您已离开通话',
  'staffCall.leftBody': '您已离开本次视频会话，其他参与者的通话不受影响。',
  'staffCall.errorTitle': '无法进入通话',
  'staffCall.fatal.protocol': '客户端与服务器版本不一致，请刷新页面。',
  'staffCall.fatal.not_authenticated': '登录已过期，请返回工作台重新登录。',
  'staffCall.fatal.forbidden': '您不是本次会话的参与者。',
  'staffCall.fatal.unknown_session': '找不到该会话。',
  'staffCall.fatal.replaced': '您已在另一个窗口打开了本次通话，本页面已停止。',
  'staffCall.fatal.connection_lost': '网络连接已中断超过 30 秒，请刷新页面重新进入。',
  'staffCall.fatal.load': '无法加载通话：{detail}',

  'expertDialog.title': '邀请专家加入',
  'expertDialog.label': '选择专家',
  'expertDialog.confirm': '邀请',
  'expertDialog.none': '当前没有可邀请的专家。',

  'events.title': '通话动态',
  'events.youJoined': '您已进入通话',
  'events.youRejoined': '您已重新连接',
  'events.joined': '{name}（{role}）加入了通话',
  'events.rejoined': '{name}（{role}）已重新连接',
  'events.left': '{name}（{role}）离开了通话',
  'events.disconnected': '{name}（{role}）网络中断，等待重新连接',
  'events.screenStarted': '{name}（{role}）开始共享屏幕',
  'events.screenStopped': '{name}（{role}）停止共享屏幕',
  'events.youShare': '您开始共享屏幕',
  'events.youStopShare': '您停止了共享屏幕',
  'events.expertInvited': '已邀请专家 {name}',
};

const en = {
  'app.name': 'vteller Video Banking',
  'ui.skipToContent': 'Skip to main content',
  'ui.largeText': 'Large text',
  'ui.switchLang': '中文',
  'ui.switchLangLabel': '切换到中文',
  'ui.retry': 'Try again',
  'ui.cancel': 'Cancel',

  'role.customer': 'Customer',
  'role.teller': 'Relationship manager',
  'role.expert': 'Expert',
  'role.supervisor': 'Supervisor',
  'role.auditor': 'Auditor',
  'role.admin': 'Administrator',
  'business.wealth': 'Wealth products',
  'business.insurance': 'Insurance',
  'business.general': 'General banking',
  'state.waiting': 'Waiting for customer',
  'state.active': 'In call',
  'state.ended': 'Ended',
  'state.interrupted': 'Interrupted',

  'customer.pageTitle': 'Video banking',
  'customer.checkingLink': 'Checking your link…',
  'customer.errorTitle': 'Cannot open the video service',
  'customer.deviceTitle': 'Check your camera and microphone',
  'customer.welcome': '{teller} has invited you to a video appointment about {business}. Please check that you can see yourself below.',
  'customer.micLevel': 'Microphone level',
  'customer.deviceStarting': 'Starting your camera and microphone. If the browser asks, choose “Allow”.',
  'customer.deviceReady': 'Your camera is on. Please say something and watch the level bar move.',
  'customer.deviceHeard': 'Camera and microphone are working. Please press “Enter waiting room”.',
  'customer.enter': 'Enter waiting room',
  'customer.lobbyTitle': 'Please wait, your relationship manager will be with you shortly',
  'customer.lobbyHint': 'Please keep this page open. Do not close or reload it.',
  'customer.callTitle': 'Video call',
  'customer.endedTitle': 'The call has ended',
  'customer.endedBody': 'Thank you. You can now close this page.',

  'join.invitation_unknown': 'This link is not valid. Please ask your relationship manager for a new link.',
  'join.invitation_expired': 'This link has expired. Please ask your relationship manager for a new link.',
  'join.invitation_used': 'This link has already been used. Please ask your relationship manager for a new link.',
  'join.session_ended': 'This video appointment has ended. Please contact your relationship manager to continue.',
  'join.replaced': 'You opened this call in another window or device, so this page has stopped.',
  'join.connection_lost': 'The network connection was lost. Please check your network and press “Try again”.',
  'join.network': 'Cannot reach the server. Please check your network and press “Try again”.',
  'join.other': 'The video service is not available right now. Please press “Try again” in a moment.',

  'media.not_found': 'No camera or microphone was found. Please connect one (or use a phone or computer with a camera) and press “Try again”.',
  'media.denied': 'The browser is not allowed to use your camera and microphone. Click the lock icon left of the address bar, allow camera and microphone, then press “Try again”.',
  'media.in_use': 'Your camera or microphone is being used by another program. Close other video apps and press “Try again”.',
  'media.insecure': 'This page is not secure, so the camera cannot be used. Please open the full link (starting with https) you were sent.',
  'media.other': 'Cannot start the camera or microphone. Please press “Try again”.',

  'status.connecting': 'Connecting…',
  'status.connected': 'Connected',
  'status.reconnecting': 'Network interrupted, reconnecting…',
  'status.disconnected': 'Disconnected',

  'call.you': 'Me',
  'call.controls': 'Call controls',
  'call.mute': 'Mute',
  'call.unmute': 'Unmute',
  'call.cameraOff': 'Turn camera off',
  'call.cameraOn': 'Turn camera on',
  'call.end': 'End call',
  'call.endConfirmTitle': 'End the call?',
  'call.endConfirmBody': 'Everyone will leave this video appointment.',
  'call.enableSound': 'Click to turn on sound',
  'call.participantReconnecting': 'Unstable network, reconnecting…',
  'call.screenOf': 'shared screen',

  'chat.title': 'Messages',
  'chat.label': 'Type a message',
  'chat.placeholder': 'Type here…',
  'chat.send': 'Send',

  'error.generic': 'Something went wrong. Please try again later.',
  'error.network': 'Cannot reach the server. Please check your network.',
  'error.not_connected': 'You are offline; the message was not sent.',
  'error.csrf_failed': 'This page is out of date. Please reload and try again.',
  'error.bad_origin': 'This request origin is not allowed. Please use the link you were sent.',
  'error.not_authenticated': 'Your login has expired. Please sign in again.',
  'error.forbidden': 'You are not allowed to do this.',
  'error.rate_limited': 'Too many attempts. Please wait and try again.',
  'error.invalid_credentials': 'Wrong username or password.',
  'error.unknown_user': 'No such user.',
  'error.already_invited': 'This expert has already been invited.',
  'error.session_ended': 'This call has ended.',
  'error.unknown_session': 'This call could not be found.',
  'error.internal': 'A server problem occurred. Please try again later.',

  'staff.pageTitle': 'vteller staff console',
  'staff.brand': 'vteller staff console',
  'staff.logout': 'Sign out',
  'staff.infoTitle': 'Your access',
  'staff.info.auditor': 'Auditors search, verify and replay archived recordings in the audit system. This console is for video calls; there is nothing for you to do here.',
  'staff.info.admin': 'Administrators create and deactivate staff accounts. This console is for video calls; there is nothing for you to do here.',

  'login.title': 'Staff sign-in',
  'login.username': 'Username',
  'login.password': 'Password',
  'login.submit': 'Sign in',
  'login.missing': 'Please enter your username and password.',
  'login.invalid': 'Wrong username or password. Please try again.',
  'login.rateLimited': 'Too many failed attempts. Please try again in {minutes} minutes.',

  'invite.title': 'Invite a customer to a video appointment',
  'invite.business': 'Business',
  'invite.customerName': 'Customer name (optional)',
  'invite.ttl': 'Link valid for',
  'invite.ttl15': '15 minutes',
  'invite.ttl30': '30 minutes',
  'invite.ttl60': '1 hour',
  'invite.ttl240': '4 hours',
  'invite.ttl1440': '24 hours',
  'invite.create': 'Create invitation link',
  'invite.resultLabel': 'Send this link to the customer:',
  'invite.copy': 'Copy link',
  'invite.copied': 'Link copied.',
  'invite.copyManual': 'Could not copy automatically. The link is selected; press Ctrl+C.',
  'invite.expires': 'Valid until {time}',
  'invite.onceOnly': 'The link is shown only once and can be used only once.',

  'sessions.autoRefresh': 'Refreshes every 3 seconds',
  'sessions.titleTeller': 'My video sessions',
  'sessions.titleExpert': 'Sessions I was invited to',
  'sessions.titleSupervisor': 'Open sessions',
  'sessions.emptyTeller': 'No sessions yet. Sessions appear here once you create an invitation.',
  'sessions.emptyExpert': 'No one has invited you yet.',
  'sessions.emptySupervisor': 'There are no open sessions.',
  'sessions.customer': 'Customer',
  'sessions.business': 'Business',
  'sessions.teller': 'Relationship manager',
  'sessions.state': 'State',
  'sessions.customerConnection': 'Customer online',
  'sessions.created': 'Created',
  'sessions.action': 'Action',
  'sessions.open': 'Open',
  'sessions.join': 'Join',
  'sessions.observe': 'Observe',
  'sessions.online': 'Online',
  'sessions.reconnecting': 'Reconnecting',
  'sessions.customerLeft': 'Left',
  'sessions.notJoined': 'Not joined',
  'sessions.unnamed': '(no name given)',

  'staffCall.pageTitle': 'Video call - vteller',
  'staffCall.back': 'Back to console',
  'staffCall.heading': '{customer} · {business}',
  'staffCall.observerPresent': 'Supervisor observing',
  'staffCall.waiting': 'Waiting for others to join…',
  'staffCall.shareScreen': 'Share screen',
  'staffCall.stopShare': 'Stop sharing',
  'staffCall.inviteExpert': 'Invite expert',
  'staffCall.leave': 'Leave call',
  'staffCall.endedTitle': 'The call has ended',
  'staffCall.endedBody': 'This video session has ended and its record is kept.',
  'staffCall.endedByYou': 'You ended this video session; its record is kept.',
  'staffCall.endedBy': '{name} ({role}) ended this video session.',
  'staffCall.endedShutdown': 'The server is under maintenance; the call was stopped.',
  'staffCall.leftTitle': 'You left the call',
  'staffCall.leftBody': 'You left this video session; it continues for the others.',
  'staffCall.errorTitle': 'Cannot join the call',
  'staffCall.fatal.protocol': 'This page does not match the server version. Please reload.',
  'staffCall.fatal.not_authenticated': 'Your login has expired. Go back to the console and sign in again.',
  'staffCall.fatal.forbidden': 'You are not a participant of this session.',
  'staffCall.fatal.unknown_session': 'This session could not be found.',
  'staffCall.fatal.replaced': 'You opened this call in another window, so this page has stopped.',
  'staffCall.fatal.connection_lost': 'The connection was lost for more than 30 seconds. Reload the page to rejoin.',
  'staffCall.fatal.load': 'Could not load the call: {detail}',

  'expertDialog.title': 'Invite an expert',
  'expertDialog.label': 'Expert',
  'expertDialog.confirm': 'Invite',
  'expertDialog.none': 'No experts are available.',

  'events.title': 'Call activity',
  'events.youJoined': 'You joined the call',
  'events.youRejoined': 'You reconnected',
  'events.joined': '{name} ({role}) joined',
  'events.rejoined': '{name} ({role}) reconnected',
  'events.left': '{name} ({role}) left',
  'events.disconnected': '{name} ({role}) lost the connection; waiting for them to reconnect',
  'events.screenStarted': '{name} ({role}) started sharing their screen',
  'events.screenStopped': '{name} ({role}) stopped sharing their screen',
  'events.youShare': 'You started sharing your screen',
  'events.youStopShare': 'You stopped sharing your screen',
  'events.expertInvited': 'Invited expert {name}',
};

const DICTIONARIES = { 'zh-CN': zhCN, en };
const DEFAULT_LANG = 'zh-CN';
const ATTRIBUTES = { i18nPlaceholder: 'placeholder', i18nAriaLabel: 'aria-label', i18nTitle: 'title' };

let lang = DICTIONARIES[loadPref('lang')] ? loadPref('lang') : DEFAULT_LANG;

export function has(key) {
  return key in DICTIONARIES[lang] || key in DICTIONARIES[DEFAULT_LANG];
}

/** args values are strings/numbers, or {t: key} to be translated themselves (e.g. a role). */
export function t(key, args = {}) {
  const template = DICTIONARIES[lang][key] ?? DICTIONARIES[DEFAULT_LANG][key] ?? key;
  return template.replace(/\{(\w+)\}/g, (match, name) => {
    const value = args[name];
    if (value === undefined || value === null) return match;
    return typeof value === 'object' ? t(value.t) : String(value);
  });
}

/** Sets an element's text to a translation and remembers the key so a language switch updates it. */
export function translate(element, key, args) {
  element.dataset.i18n = key;
  if (args) element.dataset.i18nArgs = JSON.stringify(args);
  else delete element.dataset.i18nArgs;
  element.textContent = t(key, args);
  return element;
}

export function applyI18n() {
  document.documentElement.lang = lang;
  for (const element of document.querySelectorAll('[data-i18n]')) {
    const args = element.dataset.i18nArgs ? JSON.parse(element.dataset.i18nArgs) : undefined;
    element.textContent = t(element.dataset.i18n, args);
  }
  for (const [dataKey, attribute] of Object.entries(ATTRIBUTES)) {
    const selector = `[data-${dataKey.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}]`;
    for (const element of document.querySelectorAll(selector)) {
      element.setAttribute(attribute, t(element.dataset[dataKey]));
    }
  }
}

function setLang(next) {
  if (!DICTIONARIES[next]) return;
  lang = next;
  savePref('lang', next);
  applyI18n();
}

export function toggleLang() {
  setLang(lang === DEFAULT_LANG ? 'en' : DEFAULT_LANG);
}
