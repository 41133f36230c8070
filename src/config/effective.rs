//! Effective values of a [`Config`] by key: the listing of every key, and reading or changing
//! one key the way a `ctl` command does.

use super::registry::{self, KeySpec, ListenerDraft, Lookup, Slot, Target};
use super::{Config, ListenerConfig};

/// Every key with its value in canonical text, in listing order: engine, log, each listener,
/// then each pool followed by its backends.
pub fn entries(cfg: &Config) -> Vec<(String, String)> {
    let mut out = Vec::new();
    push(&mut out, &[], &cfg.engine);
    push(&mut out, &[], &cfg.log);
    push(&mut out, &[], &cfg.ctl);
    push(&mut out, &[], &cfg.stats);
    push(&mut out, &[], &cfg.overflow);
    for listener in &cfg.listeners {
        push(&mut out, &[&listener.name], &draft(cfg, listener));
    }
    for pool in &cfg.pools {
        push(&mut out, &[&pool.name], pool);
        for backend in &pool.backends {
            push(&mut out, &[&pool.name, &backend.name], backend);
        }
    }
    out
}

fn push<T: Target>(out: &mut Vec<(String, String)>, names: &[&str], target: &T) {
    for spec in registry::KEYS {
        if let Some(field) = T::field(&spec.slot) {
            out.push((
                registry::instantiate(spec.name, names),
                field.format(target),
            ));
        }
    }
}

/// A listener with its pool as a name again, which is how its keys read it.
fn draft(cfg: &Config, listener: &ListenerConfig) -> ListenerDraft {
    ListenerDraft {
        config: listener.clone(),
        pool: cfg
            .pools
            .get(listener.pool)
            .map_or_else(String::new, |p| p.name.clone()),
    }
}

/// `key = value` lines, which [`parse`](super::parse) reads back to the same configuration.
pub fn listing(cfg: &Config) -> String {
    entries(cfg)
        .into_iter()
        .map(|(key, value)| format!("{key} = {value}\n"))
        .collect()
}

/// A key found in the registry, or a message saying why it was not.
fn find(key: &str) -> Result<(&'static KeySpec, Vec<&str>), String> {
    match registry::lookup(key) {
        Lookup::Found { spec, names } => Ok((spec, names)),
        Lookup::BadName { role, name, .. } => Err(format!(
            "{key}: invalid {role} name `{name}`: names are {}",
            super::value::NAME_RULE
        )),
        Lookup::Unknown => match registry::suggest(key) {
            Some(near) => Err(format!("{key}: unknown key; did you mean `{near}`?")),
            None => Err(format!("{key}: unknown key")),
        },
    }
}

fn missing(what: &str, name: &str) -> String {
    format!("no {what} named `{name}`")
}

impl Config {
    /// The value of one key in canonical text, like a line of [`listing`](super::listing).
    pub fn get(&self, key: &str) -> Result<String, String> {
        let (spec, names) = find(key)?;
        let in_config = |what, name: &str| format!("{key}: {}", missing(what, name));
        match (&spec.slot, names.as_slice()) {
            (Slot::Engine(field), []) => Ok(field.format(&self.engine)),
            (Slot::Log(field), []) => Ok(field.format(&self.log)),
            (Slot::Ctl(field), []) => Ok(field.format(&self.ctl)),
            (Slot::Stats(field), []) => Ok(field.format(&self.stats)),
            (Slot::Overflow(field), []) => Ok(field.format(&self.overflow)),
            (Slot::Listener(field), [listener]) => self
                .listener(listener)
                .map(|l| field.format(&draft(self, l)))
                .ok_or_else(|| in_config("listener", listener)),
            (Slot::Pool(field), [pool]) => self
                .pool(pool)
                .map(|p| field.format(p))
                .ok_or_else(|| in_config("pool", pool)),
            (Slot::Backend(field), [pool, backend]) => self
                .pool(pool)
                .and_then(|p| p.backends.iter().find(|b| b.name == *backend))
                .map(|b| field.format(b))
                .ok_or_else(|| in_config("backend", &format!("{pool}.{backend}"))),
            _ => Err(format!("{key}: registry entry {} is malformed", spec.name)),
        }
    }

    /// Changes one key that may change at runtime (see [`KeySpec::runtime`]), checking the
    /// value as the parser would; a rejected value leaves the configuration as it was. Keys
    /// read only at start are refused, since changing them here would not change what the
    /// running forwarders do.
    pub fn set_runtime(&mut self, key: &str, text: &str) -> Result<(), String> {
        let (spec, names) = find(key)?;
        if !spec.is_runtime() {
            return Err(format!(
                "{key}: cannot change at runtime; change it in the configuration file and restart"
            ));
        }
        let text = text.trim();
        let result = match (&spec.slot, names.as_slice()) {
            (Slot::Engine(field), []) => field.parse_into(&mut self.engine, text),
            (Slot::Log(field), []) => field.parse_into(&mut self.log, text),
            (Slot::Overflow(field), []) => field.parse_into(&mut self.overflow, text),
            (Slot::Pool(field), [pool]) => match self.pool_mut(pool) {
                Some(p) => field.parse_into(p, text),
                None => Err(missing("pool", pool)),
            },
            (Slot::Backend(field), [pool, backend]) => match self
                .pool_mut(pool)
                .and_then(|p| p.backends.iter_mut().find(|b| b.name == *backend))
            {
                Some(b) => field.parse_into(b, text),
                None => Err(missing("backend", &format!("{pool}.{backend}"))),
            },
            // Only its gate's rules: its socket is bound at start.
            (Slot::Listener(field), [listener]) => {
                match self.listeners.iter().position(|l| l.name == *listener) {
                    Some(i) => {
                        let mut d = draft(self, &self.listeners[i]);
                        field.parse_into(&mut d, text).map(|()| {
                            let pool = self.listeners[i].pool;
                            self.listeners[i] = ListenerConfig { pool, ..d.config };
                        })
                    }
                    None => Err(missing("listener", listener)),
                }
            }
            _ => Err(
                "cannot change at runtime; change it in the configuration file and restart".into(),
            ),
        };
        result.map_err(|message| format!("{key}: {message}"))
    }

    fn listener(&self, name: &str) -> Option<&ListenerConfig> {
        self.listeners.iter().find(|l| l.name == name)
    }

    fn pool(&self, name: &str) -> Option<&super::PoolConfig> {
        self.pools.iter().find(|p| p.name == name)
    }

    fn pool_mut(&mut self, name: &str) -> Option<&mut super::PoolConfig> {
        self.pools.iter_mut().find(|p| p.name == name)
    }
}
