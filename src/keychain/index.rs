//! Which sources a lookup asks. A source whose scope the config fixes to one exact registry
//! (a `[[registry]]` entry) can only ever offer for that registry, so it is filed under it;
//! every other source (docker configs, kubelet plugins, glob scopes) is asked every time.
//! Built once per keychain, so a lookup's cost follows the sources for its host, not the
//! number of entries in the config.

use std::collections::HashMap;
use std::sync::Arc;

use crate::identity::RegistryHost;
use crate::sources::Source;

#[derive(Debug, Default)]
pub(super) struct SourceIndex {
    /// Positions in config order, per exact registry.
    by_registry: HashMap<RegistryHost, Vec<usize>>,
    /// Positions of the sources asked for every registry, in config order.
    everywhere: Vec<usize>,
}

impl SourceIndex {
    pub(super) fn new(sources: &[Arc<dyn Source>]) -> Self {
        let mut index = Self::default();
        for (position, source) in sources.iter().enumerate() {
            match source
                .fixed_scope()
                .and_then(|scope| scope.exact_registry())
            {
                Some(registry) => index
                    .by_registry
                    .entry(registry.clone())
                    .or_default()
                    .push(position),
                None => index.everywhere.push(position),
            }
        }
        index
    }

    /// The positions of the sources that may offer for `registry`, in config order.
    pub(super) fn for_registry(&self, registry: &RegistryHost) -> Vec<usize> {
        let filed = self
            .by_registry
            .get(registry)
            .map_or(&[][..], Vec::as_slice);
        let mut positions = Vec::with_capacity(filed.len() + self.everywhere.len());
        let (mut a, mut b) = (filed.iter().peekable(), self.everywhere.iter().peekable());
        loop {
            let next = match (a.peek(), b.peek()) {
                (Some(&&x), Some(&&y)) if x < y => a.next(),
                (Some(_), Some(_)) | (None, Some(_)) => b.next(),
                (Some(_), None) => a.next(),
                (None, None) => break,
            };
            positions.extend(next.copied());
        }
        positions
    }
}
