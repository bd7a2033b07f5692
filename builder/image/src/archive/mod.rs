//! Images in and out of files: `load`, `save`, `import`, and one image of
//! an OCI layout directory (`import_layout`, for `oci-layout://` contexts).

mod import;
mod layout;
mod load;
mod save;

pub use self::import::import;
pub use self::layout::{Selector, import_layout};
pub use self::load::{Loaded, load};
pub use self::save::{
    Format, SaveReport, save, save_images, save_images_to_file, save_targets, save_targets_to_file,
    save_to_file,
};

#[cfg(test)]
mod tests;
