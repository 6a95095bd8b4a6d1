//! A broker app's destination (`crate::broker::Destination`), sealed at
//! rest with the secrets key as the app's signing key is: its URL carries
//! the broker's credentials.

use entity::app;

use super::{Store, StoreError};
use crate::broker::Destination;

/// The associated data that binds a destination to its app's row.
fn destination_aad(app_id: &str) -> String {
    format!("apps/{app_id}/destination")
}

impl Store {
    /// `destination` sealed for app `app_id`'s row.
    pub(crate) fn seal_destination(&self, app_id: &str, destination: &Destination) -> String {
        self.keys
            .seal(&destination.to_stored(), &destination_aad(app_id))
    }

    /// The app's destination, opened; `None` when it has none (or one this
    /// version cannot read).
    pub fn destination(&self, app: &app::Model) -> Result<Option<Destination>, StoreError> {
        let Some(sealed) = &app.destination_ciphertext else {
            return Ok(None);
        };
        let opened = self.keys.open(sealed, &destination_aad(&app.id))?;
        Ok(Destination::from_stored(
            secrecy::ExposeSecret::expose_secret(&opened),
        ))
    }
}
