/** The chatd web app: sign-in, chat, administration. */
import { render } from 'preact';
import { useEffect, useState } from 'preact/hooks';
import { AdminView } from './Admin';
import { Bench } from './Bench';
import { ConversationList, ConversationView } from './Chat';
import { currentLang, setLang, t, type Lang } from './i18n';
import { store, useStore } from './store';
import './style.css';

function SignIn() {
  const [user, setUser] = useState('');
  const [password, setPassword] = useState('');
  const [tokenMode, setTokenMode] = useState(false);
  const [token, setToken] = useState('');
  const [err, setErr] = useState('');
  const [busy, setBusy] = useState(false);
  const submit = async (e: Event) => {
    e.preventDefault();
    setBusy(true);
    setErr('');
    try {
      await store.signIn(user.trim(), tokenMode ? null : password, tokenMode ? token.trim() : null);
    } catch (x) {
      setErr(`${t().signInFailed}: ${(x as Error).message}`);
    } finally {
      setBusy(false);
    }
  };
  return (
    <main class="signin">
      <form onSubmit={(e) => void submit(e)} aria-label={t().signIn}>
        <h1>chatd</h1>
        {!tokenMode && (
          <>
            <label>
              {t().userId}
              <input name="user" autoComplete="username" value={user} onInput={(e) => setUser(e.currentTarget.value)} required autoFocus />
            </label>
            <label>
              {t().password}
              <input name="password" type="password" autoComplete="current-password" value={password} onInput={(e) => setPassword(e.currentTarget.value)} required />
            </label>
          </>
        )}
        {tokenMode && (
          <label>
            {t().token}
            <textarea name="token" value={token} onInput={(e) => setToken(e.currentTarget.value)} rows={4} required />
          </label>
        )}
        <label class="check">
          <input type="checkbox" checked={tokenMode} onChange={(e) => setTokenMode(e.currentTarget.checked)} name="token-mode" /> {t().useToken}
        </label>
        {err && (
          <p role="alert" class="error">
            {err}
          </p>
        )}
        <button type="submit" disabled={busy}>
          {t().signIn}
        </button>
        <LangSwitch />
      </form>
    </main>
  );
}

function LangSwitch() {
  const [, force] = useState(0);
  return (
    <label class="lang">
      {t().language}{' '}
      <select
        value={currentLang()}
        name="lang"
        onChange={(e) => {
          setLang(e.currentTarget.value as Lang);
          force((n) => n + 1);
          store.changed();
        }}
      >
        <option value="en">English</option>
        <option value="zh">中文</option>
      </select>
    </label>
  );
}

function App() {
  const s = useStore();
  useEffect(() => {
    void s.resume();
  }, []);
  if (location.hash.startsWith('#/bench')) return <Bench />;
  if (!s.me) return <SignIn />;
  const online = s.conn === 'open';
  return (
    <div class="app">
      <header class="top">
        <strong>chatd</strong>
        <nav aria-label="views">
          <button type="button" class={s.view === 'chat' ? 'active' : ''} aria-pressed={s.view === 'chat'} onClick={() => { s.view = 'chat'; s.changed(); }} data-view="chat">
            {t().chat}
          </button>
          <button type="button" class={s.view === 'admin' ? 'active' : ''} aria-pressed={s.view === 'admin'} onClick={() => { s.view = 'admin'; s.changed(); }} data-view="admin">
            {t().admin}
          </button>
        </nav>
        <span class={`conn ${online ? 'on' : 'off'}`} role="status" aria-label={t().connection} data-conn={s.conn}>
          {online ? t().online : t().offline}
        </span>
        <span class="me">{s.me.account?.name ?? s.me.user}</span>
        <LangSwitch />
        <button type="button" onClick={() => s.signOut()}>
          {t().signOut}
        </button>
      </header>
      <div class="body">
        <ConversationList />
        {s.view === 'chat' ? <ConversationView /> : <AdminView />}
      </div>
    </div>
  );
}

document.documentElement.lang = currentLang() === 'zh' ? 'zh-CN' : 'en';
render(<App />, document.getElementById('app')!);
