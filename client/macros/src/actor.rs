//! `#[shoal::actor]`: an `impl` block becomes an actor type.

use crate::number;
use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote};
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::{FnArg, ImplItem, ImplItemFn, ItemImpl, LitStr, Meta, Pat, ReturnType, Token, Type};

/// Options of `#[shoal::actor(..)]`.
pub(crate) struct ActorOptions {
    num_cpus: f64,
    resources: Vec<(String, f64)>,
    max_restarts: u32,
    max_task_retries: u32,
    max_concurrency: u32,
    name: Option<LitStr>,
}

impl Parse for ActorOptions {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let mut o = ActorOptions { num_cpus: 0.0, resources: Vec::new(), max_restarts: 0, max_task_retries: 0, max_concurrency: 1, name: None };
        let metas = Punctuated::<Meta, Token![,]>::parse_terminated(input)?;
        for m in metas {
            match &m {
                Meta::NameValue(nv) if nv.path.is_ident("num_cpus") => {
                    o.num_cpus = number(&nv.value)?;
                    if o.num_cpus < 0.0 {
                        return Err(syn::Error::new_spanned(&nv.value, "num_cpus must be >= 0"));
                    }
                }
                Meta::NameValue(nv) if nv.path.is_ident("max_restarts") => o.max_restarts = number(&nv.value)? as u32,
                Meta::NameValue(nv) if nv.path.is_ident("max_task_retries") => o.max_task_retries = number(&nv.value)? as u32,
                Meta::NameValue(nv) if nv.path.is_ident("max_concurrency") => o.max_concurrency = (number(&nv.value)? as u32).max(1),
                Meta::NameValue(nv) if nv.path.is_ident("name") => o.name = Some(crate::string(&nv.value, "name")?),
                Meta::List(list) if list.path.is_ident("resources") => o.resources.extend(crate::resources(list)?),
                other => {
                    return Err(syn::Error::new_spanned(
                        other,
                        "unknown option; expected num_cpus = N, resources(name = N, ...), max_restarts = N, max_task_retries = N, max_concurrency = N or name = \"...\"",
                    ));
                }
            }
        }
        Ok(o)
    }
}

/// A method's typed parameters.
fn params(f: &ImplItemFn) -> syn::Result<(Vec<syn::Ident>, Vec<Type>)> {
    let mut names = Vec::new();
    let mut types = Vec::new();
    for (i, input) in f.sig.inputs.iter().enumerate() {
        let FnArg::Typed(pt) = input else { continue };
        if let Type::Reference(r) = &*pt.ty {
            return Err(syn::Error::new_spanned(r, "actor method parameters must be owned, serializable types, not references"));
        }
        names.push(match &*pt.pat {
            Pat::Ident(pi) => pi.ident.clone(),
            _ => format_ident!("arg{}", i),
        });
        types.push((*pt.ty).clone());
    }
    Ok((names, types))
}

fn ret_type(f: &ImplItemFn) -> Type {
    match &f.sig.output {
        ReturnType::Default => syn::parse_quote!(()),
        ReturnType::Type(_, t) => (**t).clone(),
    }
}

pub(crate) fn expand(opts: ActorOptions, block: ItemImpl) -> syn::Result<TokenStream> {
    if !block.generics.params.is_empty() {
        return Err(syn::Error::new_spanned(&block.generics, "actor types cannot be generic: each needs one registered name"));
    }
    if let Some((_, path, _)) = &block.trait_ {
        return Err(syn::Error::new_spanned(path, "#[shoal::actor] goes on the type's own impl block, not on a trait impl"));
    }
    let self_ty = &block.self_ty;
    let ident = match &**self_ty {
        Type::Path(p) => p.path.segments.last().map(|s| s.ident.clone()).ok_or_else(|| syn::Error::new_spanned(self_ty, "expected a type name"))?,
        other => return Err(syn::Error::new_spanned(other, "expected a type name")),
    };
    let class_name = ident.to_string();
    let class_expr = match &opts.name {
        Some(s) => quote!(#s),
        None => quote!(::core::concat!(::core::module_path!(), "::", #class_name)),
    };
    let module = format_ident!("__shoal_actor_{}", class_name.to_lowercase());
    let methods_ty = format_ident!("{}Methods", ident);
    let options_ty = format_ident!("{}ActorOptions", ident);
    let upper = class_name.to_uppercase();

    let mut ctor: Option<&ImplItemFn> = None;
    let mut remote_methods: Vec<&ImplItemFn> = Vec::new();
    for item in &block.items {
        let ImplItem::Fn(f) = item else { continue };
        let receiver = f.sig.inputs.iter().find_map(|a| match a {
            FnArg::Receiver(r) => Some(r),
            _ => None,
        });
        match receiver {
            None if f.sig.ident == "new" => ctor = Some(f),
            None => {}
            Some(r) => {
                if r.reference.is_none() {
                    return Err(syn::Error::new_spanned(r, "actor methods take &self or &mut self (the actor keeps its value)"));
                }
                if !f.sig.generics.params.is_empty() {
                    return Err(syn::Error::new_spanned(&f.sig.generics, "actor methods cannot be generic"));
                }
                remote_methods.push(f);
            }
        }
    }
    let ctor = ctor.ok_or_else(|| syn::Error::new(Span::call_site(), "an actor's impl block needs a constructor `fn new(..) -> Self`"))?;
    if ctor.sig.asyncness.is_some() {
        return Err(syn::Error::new_spanned(ctor.sig.asyncness, "the actor constructor cannot be async"));
    }
    let (ctor_names, ctor_types) = params(ctor)?;
    let ctor_n = ctor_names.len();
    let ctor_idx: Vec<usize> = (0..ctor_n).collect();
    let num_cpus = opts.num_cpus;
    let res_names: Vec<&String> = opts.resources.iter().map(|(k, _)| k).collect();
    let res_amounts: Vec<f64> = opts.resources.iter().map(|(_, v)| *v).collect();
    let (max_restarts, max_task_retries, max_concurrency) = (opts.max_restarts, opts.max_task_retries, opts.max_concurrency);
    let ctor_slot = format_ident!("__SHOAL_ACTOR_{}_NEW", upper, span = Span::call_site());

    let has_async = remote_methods.iter().any(|f| f.sig.asyncness.is_some());
    let mut method_items = Vec::new();
    let mut handle_methods = Vec::new();
    for f in &remote_methods {
        let m = &f.sig.ident;
        let m_name = m.to_string();
        let (names, types) = params(f)?;
        let n = names.len();
        let idx: Vec<usize> = (0..n).collect();
        let ret = ret_type(f);
        let exclusive = f.sig.inputs.iter().any(|a| matches!(a, FnArg::Receiver(r) if r.mutability.is_some()));
        let is_async = f.sig.asyncness.is_some();
        let meta = format_ident!("META_{}", m_name.to_uppercase());
        let call_fn = format_ident!("call_{}", m);
        let slot = format_ident!("__SHOAL_ACTOR_{}_M_{}", upper, m_name.to_uppercase(), span = Span::call_site());
        let access = if exclusive { quote!(g.get_mut::<#self_ty>()?) } else { quote!(g.get::<#self_ty>()?) };
        let invoke = if is_async { quote!(this.#m(#(#names),*).await) } else { quote!(this.#m(#(#names),*)) };
        let bind_g = if exclusive { quote!(let mut g = g;) } else { quote!(let g = g;) };
        method_items.push(quote! {
            pub static #meta: ::shoal::__private::FunctionMeta =
                ::shoal::__private::FunctionMeta::new(::core::concat!(#class_expr, "::", #m_name), 0.0, &[], 0, false);

            pub fn #call_fn(g: ::shoal::__private::ActorGuard, args: ::std::vec::Vec<::shoal::__private::Bytes>) -> ::shoal::__private::MethodFuture {
                ::std::boxed::Box::pin(async move {
                    #bind_g
                    ::shoal::__private::check_arity(&args, #n)?;
                    #( let #names: #types = ::shoal::__private::decode_arg(&args, #idx)?; )*
                    let this = #access;
                    let out: #ret = #invoke;
                    ::shoal::__private::encode_result(out)
                })
            }

            #[::shoal::__private::linkme::distributed_slice(::shoal::__private::ACTOR_METHODS)]
            #[linkme(crate = ::shoal::__private::linkme)]
            static #slot: ::shoal::__private::ActorMethod = ::shoal::__private::ActorMethod {
                name: #meta.name,
                exclusive: #exclusive,
                is_async: #is_async,
                call: #call_fn,
            };
        });
        let doc = format!("Calls [`{class_name}::{m_name}`] on the actor; returns a reference to its result at once.");
        handle_methods.push(quote! {
            #[doc = #doc]
            pub fn #m(&self, #(#names: impl ::shoal::IntoArg<#types>),*) -> ::shoal::ObjectRef<#ret> {
                self.0.call(&#module::#meta, ::std::vec![#(::shoal::IntoArg::into_arg(#names)),*])
            }
        });
    }
    let methods_doc = format!("The remote methods of a [`{class_name}`] actor: what an `ActorHandle<{class_name}>` dereferences to.");
    let options_doc = format!("How to start a [`{class_name}`] actor; see [`{class_name}::options`].");
    Ok(quote! {
        #block

        #[doc(hidden)]
        #[allow(non_snake_case, non_upper_case_globals, clippy::all, unused_imports, unused_mut)]
        mod #module {
            use super::*;

            pub const CLASS: &str = #class_expr;

            pub static CTOR_META: ::shoal::__private::FunctionMeta = ::shoal::__private::FunctionMeta::new(
                ::core::concat!(#class_expr, "::new"),
                #num_cpus,
                &[#((#res_names, #res_amounts)),*],
                #max_restarts,
                false,
            );

            pub static DEFAULTS: ::shoal::__private::ActorDefaults = ::shoal::__private::ActorDefaults {
                max_restarts: #max_restarts,
                max_task_retries: #max_task_retries,
                max_concurrency: #max_concurrency,
            };

            pub fn construct(args: &[::shoal::__private::Bytes]) -> ::core::result::Result<::shoal::__private::ActorState, ::shoal::__private::InvokeError> {
                ::shoal::__private::check_arity(args, #ctor_n)?;
                #( let #ctor_names: #ctor_types = ::shoal::__private::decode_arg(args, #ctor_idx)?; )*
                let value: #self_ty = <#self_ty>::new(#(#ctor_names),*);
                ::core::result::Result::Ok(::shoal::__private::boxed_state(value))
            }

            #[::shoal::__private::linkme::distributed_slice(::shoal::__private::ACTOR_CLASSES)]
            #[linkme(crate = ::shoal::__private::linkme)]
            static #ctor_slot: ::shoal::__private::ActorClass = ::shoal::__private::ActorClass { name: CTOR_META.name, construct, has_async: #has_async };

            #(#method_items)*
        }

        #[doc = #methods_doc]
        #[derive(Clone, Debug)]
        pub struct #methods_ty(::shoal::RawActor);

        impl ::core::convert::From<::shoal::RawActor> for #methods_ty {
            fn from(raw: ::shoal::RawActor) -> Self {
                #methods_ty(raw)
            }
        }

        impl ::core::convert::AsRef<::shoal::RawActor> for #methods_ty {
            fn as_ref(&self) -> &::shoal::RawActor {
                &self.0
            }
        }

        #[allow(clippy::too_many_arguments)]
        impl #methods_ty {
            #(#handle_methods)*
        }

        impl ::shoal::Actor for #self_ty {
            const CLASS: &'static str = #module::CLASS;
            type Methods = #methods_ty;
        }

        #[doc = #options_doc]
        #[derive(Clone, Debug, Default)]
        pub struct #options_ty(::shoal::ActorOptions);

        impl #options_ty {
            /// CPUs the actor holds while it lives (default 0).
            pub fn num_cpus(self, n: f64) -> Self {
                #options_ty(self.0.num_cpus(n))
            }
            /// Custom resources the actor holds while it lives, e.g. `&[("gpu", 1.0)]`.
            pub fn resources(self, r: &[(&str, f64)]) -> Self {
                #options_ty(self.0.resources(r))
            }
            /// Times the actor is started again after its process or node dies.
            pub fn max_restarts(self, n: u32) -> Self {
                #options_ty(self.0.max_restarts(n))
            }
            /// Times a call interrupted by the actor's death runs again on its next instance.
            pub fn max_task_retries(self, n: u32) -> Self {
                #options_ty(self.0.max_task_retries(n))
            }
            /// Async method calls running at once.
            pub fn max_concurrency(self, n: u32) -> Self {
                #options_ty(self.0.max_concurrency(n))
            }
            /// The name other drivers find it by (`shoal::get_actor`).
            pub fn name(self, name: &str) -> Self {
                #options_ty(self.0.name(name))
            }
            /// The namespace of its name.
            pub fn namespace(self, namespace: &str) -> Self {
                #options_ty(self.0.namespace(namespace))
            }
            /// It outlives the job that made it, until killed (`lifetime="detached"`).
            pub fn detached(self) -> Self {
                #options_ty(self.0.detached())
            }
            /// Starts it on `node` only.
            pub fn on_node(self, node: ::shoal::NodeId) -> Self {
                #options_ty(self.0.on_node(node))
            }
            /// Starts it on `node` if that has room, else anywhere.
            pub fn prefer_node(self, node: ::shoal::NodeId) -> Self {
                #options_ty(self.0.prefer_node(node))
            }
            /// Starts the actor with these options; returns its handle at once.
            pub fn remote(self, #(#ctor_names: impl ::shoal::IntoArg<#ctor_types>),*) -> ::shoal::ActorHandle<#self_ty> {
                ::shoal::__private::create_actor::<#self_ty>(&#module::CTOR_META, &#module::DEFAULTS, self.0, ::std::vec![#(::shoal::IntoArg::into_arg(#ctor_names)),*])
            }
        }

        impl #self_ty {
            /// Starts this actor on the cluster (its `new` runs there); returns its handle at once.
            pub fn remote(#(#ctor_names: impl ::shoal::IntoArg<#ctor_types>),*) -> ::shoal::ActorHandle<#self_ty> {
                #options_ty::default().remote(#(#ctor_names),*)
            }

            /// Options for starting this actor (`name`, `max_restarts`, resources, ...), then `.remote(..)`.
            pub fn options() -> #options_ty {
                #options_ty::default()
            }
        }
    })
}
